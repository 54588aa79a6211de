"""Secure aggregation (SecAgg with the SecAgg+ neighbour graph); docs/protocol.md §10."""
