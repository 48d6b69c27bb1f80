"""User commands that are not DVC stages: predict, compare, baseline, repro-check, reproduce, params-reference,
plots-template, sweep."""
