"""The MQTT contract shared by devices and the aggregator: topics, envelopes, crypto, chunking."""
