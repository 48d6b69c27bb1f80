"""One Click command per `dvc.yaml` stage, named like the stage: parse, call the core, print."""
