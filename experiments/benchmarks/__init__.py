"""One script per figure, each printing ONE JSON line: ``python -m experiments.benchmarks.NAME``."""
