"""Lowering spec -> kernel plans -> Jinja2-rendered Triton sources -> AOT binaries.

Here now: `aot`, ahead-of-time compilation for gfx942 / gfx950 / sm_90 with resource
reports (used by the fused verifier). The spec-driven templates and the generated model
arrive with issue #4 (attention, CCA, norms) and #5 (MoE); until then
`zdiff.load_model(..., backend="triton")` says so instead of silently using torch.
"""
