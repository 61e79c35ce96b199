"""The paper's experiments as library functions (synthetic sweeps, the real-data table)."""
