"""Hyperparameter sweeps: each combination one MLflow project run (a Kubernetes Job or a local
process), nested under a parent sweep run, watched live, resumable and cancellable."""
