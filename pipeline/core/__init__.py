"""The pipeline's work as plain functions and small classes: no Click, no sys.exit, no params.yaml
but in params."""
