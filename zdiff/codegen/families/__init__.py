"""One module per kernel family: its plans for a spec and target, and its autotuning config space."""
