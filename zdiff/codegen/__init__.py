"""Lowering spec -> kernel plans -> Jinja2-rendered Triton sources -> AOT binaries.

- `plan`: which kernel instances a spec needs (today: RMSNorm per normalised width);
- `render`: Jinja2 templates from zdiff/templates -> readable, importable sources;
- `aot`: ahead-of-time compilation for gfx942 / gfx950 / sm_90 with resource reports;
- `compile`: `zdiff compile` (sources, binaries, manifest; byte-identical reruns).
The attention, CCA and MoE templates and the generated model (`backend="triton"`) are the
rest of issues #4 / #5; until they exist `zdiff.load_model(..., backend="triton")` says so.
"""
