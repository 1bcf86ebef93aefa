"""Evaluation: exact AR scoring (`scoring`, no extra dependency) and the lm-eval adapter (`lm_adapter`,
`pip install "zdiff[eval]"`, imported only when used)."""
