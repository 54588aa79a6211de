"""ECG signal to labelled beats: records, RR features, beat windows, synthetic patients."""
