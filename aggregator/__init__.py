"""The aggregator service: rounds, ingest, aggregation strategies, publishing."""
