"""The device daemon: ECG sources, the local beat store, the outbox and the service loop."""
