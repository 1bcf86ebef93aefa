"""Lowering spec -> kernel plans -> Jinja2-rendered Triton sources -> AOT binaries.

Planned in issue #4 (attention, CCA, norms) and #5 (MoE); nothing is generated yet.
`zdiff.load_model(..., backend="triton")` says so instead of silently using torch.
"""
