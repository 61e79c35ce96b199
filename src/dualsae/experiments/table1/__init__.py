"""experiments/table1."""
