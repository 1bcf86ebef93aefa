"""Lowering spec -> kernel plans -> Jinja2-rendered Triton sources -> AOT binaries (NOTES.md, "Pipeline map").

- `plan`: `KernelPlan` and the typed `KernelFamily` interface; `families/`: one family per module and
  the registry (`plan_kernels`);
- `render`: Jinja2 templates from zdiff/templates -> readable, importable sources, and model.py;
- `aot`: ahead-of-time compilation for gfx942 / gfx950 / sm_90 with resource reports; AOT signatures
  derived from the kernels' own parameters;
- `compile`: `zdiff compile` (sources, binaries, manifest; byte-identical reruns);
- `provenance`: what a render depends on (manifest, cache key, refusal of stale outputs);
- `generated`: the generated model class, from a compile output or the render cache.
"""
