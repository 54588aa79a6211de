"""Command line, simulator, benchmarks and other tooling behind ``fedbeat``."""
