"""User commands that are not DVC stages: predict, compare, repro-check, reproduce, params-reference."""
