"""Commands that are not stages: clients of the pipeline's results (predict, compare, report,
repro-check, …)."""
