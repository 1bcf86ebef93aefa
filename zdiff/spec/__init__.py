"""The spec language: YAML -> frozen dataclasses, validated, with derived counts."""

from .counts import ModelCounts, count_model
from .loader import dump_spec, load_spec, parse_spec, preset_names, resolve_spec_path, spec_from_dict
from .schema import (
    TARGET_NAMES,
    AttentionSpec,
    BalancingBiasSpec,
    CCASpec,
    DiffusionSpec,
    MLPSpec,
    ModelSpec,
    MoESpec,
    RopeScalingSpec,
    RouterSpec,
    SamplerSpec,
    Spec,
)

__all__ = [
    "TARGET_NAMES", "AttentionSpec", "BalancingBiasSpec", "CCASpec", "DiffusionSpec", "MLPSpec", "ModelCounts",
    "ModelSpec", "MoESpec", "RopeScalingSpec", "RouterSpec", "SamplerSpec", "Spec", "count_model", "dump_spec",
    "load_spec", "parse_spec", "preset_names", "resolve_spec_path", "spec_from_dict",
]
