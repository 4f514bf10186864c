"""Experiment tracking: MLflow run records (:mod:`.recorder`) and the run's PNG figures (:mod:`.plots`)."""
