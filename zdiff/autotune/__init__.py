"""Per-target config spaces, static pruning, tuned JSON tables and the sympy cost model (issue #7)."""
