"""experiments/synthetic."""
