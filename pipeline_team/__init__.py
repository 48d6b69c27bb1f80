"""What a team adds on top of the pipeline: the shared stack (PostgreSQL, S3, MLflow server) and
Optuna sweeps."""
