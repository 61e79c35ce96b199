"""Evaluation metrics: synthetic ground truth (App. E.3) and real-data tasks (Sec. 6.2)."""
