"""Launch configurations shared by every generated kernel module.

A config is one flat dict per kernel entry point. Upper-case keys are `tl.constexpr` tile
sizes (BLOCK_M, BLOCK_N, ...); lower-case keys are launch options: `num_warps`,
`num_stages`, and on AMD `waves_per_eu`, `matrix_instr_nonkdim`, `kpack`. Keeping both in
one dict is what lets an autotune table row replace a default wholesale.

Generated modules hold `CONFIGS` (the defaults rendered for their target) and `TABLES`
(filled from autotune tables when a generated model loads; keyed by shape bucket). Kernels
ask `pick_config(module.TABLES, kernel, bucket, module.CONFIGS[kernel])` at launch.
"""

from __future__ import annotations

import torch

from ..targets import AMD_OPTIONS

LAUNCH_OPTIONS = ("num_warps", "num_stages", *AMD_OPTIONS)


def split_config(config: dict) -> tuple[dict, dict]:
    """(constexprs, launch options) of a config dict."""
    constexprs = {k: v for k, v in config.items() if k.isupper()}
    options = {k: v for k, v in config.items() if not k.isupper()}
    unknown = set(options) - set(LAUNCH_OPTIONS)
    assert not unknown, f"unknown launch options {sorted(unknown)} in {config}"
    return constexprs, options


def launch_kwargs(config: dict) -> dict:
    """Keyword arguments for `kernel[grid](..., **launch_kwargs(config))` on the running device.

    AMD-only options are dropped unless the device is a ROCm one (the CUDA backend and the
    interpreter reject them); the interpreter ignores warps and stages anyway.
    """
    constexprs, options = split_config(config)
    if torch.version.hip is None:
        options = {k: v for k, v in options.items() if k not in AMD_OPTIONS}
    return {**constexprs, **options}


def pick_config(tables: dict, kernel: str, bucket: int, default: dict) -> dict:
    """The tuned config of the nearest shape bucket (ties go to the smaller one), or the default."""
    table = tables.get(kernel)
    if not table:
        return default
    nearest = min(table, key=lambda key: (abs(int(key) - bucket), int(key)))
    return table[nearest]
