"""Import Hugging Face checkpoints (ZAYA1 `zaya`, Qwen3-MoE `qwen3_moe`; the dense Llama `llama`, Qwen2.5
`qwen2`, Qwen3 `qwen3`) as zdiff checkpoints.

The mapping is explicit in both directions: the config keys zdiff reads, the ones it
refuses (features the spec language cannot express), and one tensor name per zdiff
parameter. Anything unmapped is an error, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import CheckpointError, SpecError, ZdiffWarning
from ..outputs import atomic_directory, check_output
from ..spec import Spec, spec_from_dict
from ..spec.schema import ModelSpec, TargetName
from .store import (
    check_tokenizer_files,
    check_weight,
    copy_tokenizer,
    repaired_generation_config,
    short_list,
    write_checkpoint_files,
)
from .tensors import TensorSource

DENSE_TYPES = ("llama", "qwen2", "qwen3")
SUPPORTED = ("zaya", "qwen3_moe", *DENSE_TYPES)

# zdiff name inside a layer -> HF name inside `model.layers.N.`
_ZAYA_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "moe_norm.weight": "post_attention_layernorm.weight",
    "attn_residual.out_scale": "post_attention_residual_scale.hidden_states_scale",
    "attn_residual.out_bias": "post_attention_residual_scale.hidden_states_bias",
    "attn_residual.residual_scale": "post_attention_residual_scale.residual_scale",
    "attn_residual.residual_bias": "post_attention_residual_scale.residual_bias",
    "moe_residual.out_scale": "post_mlp_residual_scale.hidden_states_scale",
    "moe_residual.out_bias": "post_mlp_residual_scale.hidden_states_bias",
    "moe_residual.residual_scale": "post_mlp_residual_scale.residual_scale",
    "moe_residual.residual_bias": "post_mlp_residual_scale.residual_bias",
    "attn.q_proj.": "self_attn.qkv_proj.q_proj.",
    "attn.k_proj.": "self_attn.qkv_proj.k_proj.",
    "attn.v_proj_current.": "self_attn.qkv_proj.v_proj_current.",
    "attn.v_proj_delayed.": "self_attn.qkv_proj.v_proj_delayed.",
    "attn.conv_depthwise.": "self_attn.qkv_proj.conv_qk_depthwise.",
    "attn.conv_grouped.": "self_attn.qkv_proj.conv_qk_grouped.",
    "attn.key_temperature": "self_attn.qk_norm.temp",
    "attn.o_proj.": "self_attn.o_proj.",
    "moe.router.down_proj.": "mlp.gate.down_proj.",
    "moe.router.state_scale": "mlp.gate.router_states_scale",
    "moe.router.norm.weight": "mlp.gate.router_mlp.norm.weight",
    "moe.router.fc1.": "mlp.gate.router_mlp.fc1.",
    "moe.router.fc2.": "mlp.gate.router_mlp.fc2.",
    "moe.router.out_proj.": "mlp.gate.router_mlp.out_proj.",
    "moe.router.balancing_bias": "mlp.gate.balancing_biases",
    "moe.experts.gate_up": "mlp.experts.gate_up_proj",
    "moe.experts.down": "mlp.experts.down_proj",
}
_QWEN_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "moe_norm.weight": "post_attention_layernorm.weight",
    "attn.q_proj.": "self_attn.q_proj.",
    "attn.k_proj.": "self_attn.k_proj.",
    "attn.v_proj.": "self_attn.v_proj.",
    "attn.o_proj.": "self_attn.o_proj.",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "moe.router.weight": "mlp.gate.weight",
    "moe.experts.gate_up": "mlp.experts.gate_up_proj",  # fused layout; per-expert files are stacked below
    "moe.experts.down": "mlp.experts.down_proj",
}
# the dense families: one SwiGLU MLP per layer; HF's gate_proj and up_proj rows are stacked into gate_up
_DENSE_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "attn.q_proj.": "self_attn.q_proj.",
    "attn.k_proj.": "self_attn.k_proj.",
    "attn.v_proj.": "self_attn.v_proj.",
    "attn.o_proj.": "self_attn.o_proj.",
    "attn.q_norm.weight": "self_attn.q_norm.weight",  # qwen3
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "mlp.gate_up.weight": "mlp.gate_up_proj.weight",  # no such HF tensor: the parts below, concatenated
    "mlp.down.weight": "mlp.down_proj.weight",
}
# One table per HF model type, read in both directions (import here, `zdiff export` in hf_export.py):
# a new model type is one entry here, its config mapping in spec_from_hf_config and hf_export.CONFIG_WRITERS.
LAYER_NAMES = {"zaya": _ZAYA_LAYER, "qwen3_moe": _QWEN_LAYER, **{t: _DENSE_LAYER for t in DENSE_TYPES}}
# Qwen3-MoE checkpoints on the hub store each expert's gate/up/down as its own tensor; zdiff stacks them
PER_EXPERT = {"qwen3_moe": {"moe.experts.gate_up": ("gate_proj", "up_proj"), "moe.experts.down": ("down_proj",)}}
# the zdiff spec (diffusion, sampler, targets, name, balancing rule) rides in config.json under this key
ZDIFF_KEY = "zdiff"
# zdiff tensors inside a layer that are HF tensors concatenated along dim 0, in this order
CONCATENATED = {t: {"mlp.gate_up.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight")} for t in DENSE_TYPES}
_TOP = {
    "embed.weight": "model.embed_tokens.weight",
    "embed_scale": "model.input_hidden_states_scale",
    "embed_bias": "model.input_hidden_states_bias",
    "final_norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_LAYER_NAME = re.compile(r"^layers\.(\d+)\.(.+)$")


def hf_name(model_type: str, name: str) -> str:
    """The HF tensor name of a zdiff parameter or buffer."""
    if name in _TOP:
        return _TOP[name]
    match = _LAYER_NAME.match(name)
    table = LAYER_NAMES[model_type]
    if match:
        layer, rest = match.groups()
        for ours, theirs in table.items():
            if rest.startswith(ours):
                return f"model.layers.{layer}.{theirs}{rest[len(ours):]}"
    raise KeyError(f"no HF name for zdiff tensor {name} ({model_type})")


def per_expert_names(layer, parts: tuple[str, ...], num_experts: int) -> list[str]:
    return [f"model.layers.{layer}.mlp.experts.{e}.{p}.weight" for e in range(num_experts) for p in parts]


def hf_concatenated_names(model_type: str, name: str) -> list[str] | None:
    """The HF tensors a zdiff tensor is the dim-0 concatenation of, in order (a dense layer's gate_up: gate_proj,
    up_proj), or None when it maps to one tensor (`hf_name`). An export splits it into equal parts."""
    match = _LAYER_NAME.match(name)
    parts = CONCATENATED.get(model_type, {}).get(match.group(2)) if match else None
    return [f"model.layers.{match.group(1)}.{part}" for part in parts] if parts else None


def _refuse(field: str, value, why: str):
    raise CheckpointError(f"config.json: {field} = {value!r} is not supported ({why})")


def _required(cfg: dict, *keys: str):
    """The first of `keys` that config.json has (several names for one field across transformers versions)."""
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    raise CheckpointError(f"config.json: no {' or '.join(keys)}")


def _positive_int(cfg: dict, key: str) -> int:
    value = _required(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"config.json: {key} must be a positive integer, got {value!r}")
    return value


def _rope(cfg: dict, layer_type: str | None) -> dict:
    """rope_theta, rope_fraction and rope_scaling from `rope_parameters` (transformers 5) or the older top-level
    `rope_theta` / `rope_scaling` keys."""
    params = cfg.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise CheckpointError(f"config.json: rope_parameters must be an object, got {type(params).__name__}")
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    legacy = cfg.get("rope_scaling") or {}
    if not isinstance(legacy, dict):
        raise CheckpointError(f"config.json: rope_scaling must be an object, got {type(legacy).__name__}")
    params = {**legacy, **params}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3", "yarn"):
        _refuse("rope_parameters.rope_type", rope_type, "RoPE kinds: default, linear, llama3, yarn")
    theta = params.get("rope_theta", cfg.get("rope_theta"))
    if theta is None:
        raise CheckpointError("config.json: no rope_theta (in rope_parameters or at top level)")
    fraction = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    rope = {"rope_theta": theta, "rope_fraction": fraction}  # types and ranges: the spec checks them
    if rope_type != "default":
        rope["rope_scaling"] = _rope_scaling(cfg, params, rope_type)
    return rope


def _rope_scaling(cfg: dict, params: dict, rope_type: str) -> dict:
    """The spec's model.attention.rope_scaling, with transformers' defaults for what the config leaves out."""
    scaling = {"kind": rope_type, "factor": params.get("factor")}
    if rope_type in ("llama3", "yarn"):
        scaling["original_max_position"] = params.get("original_max_position_embeddings")
    if rope_type == "llama3":
        scaling.update(low_freq_factor=params.get("low_freq_factor"), high_freq_factor=params.get("high_freq_factor"))
    if rope_type == "yarn":
        if scaling["factor"] is None and scaling["original_max_position"]:  # DeepSeek-V3 style: from the lengths
            scaling["factor"] = _required(cfg, "max_position_embeddings") / scaling["original_max_position"]
        factor, mscale, mscale_all = scaling["factor"], params.get("mscale"), params.get("mscale_all_dim")
        attention_factor = params.get("attention_factor")
        if attention_factor is None and mscale and mscale_all and isinstance(factor, (int, float)) and factor > 1:
            attention_factor = (0.1 * mscale * math.log(factor) + 1) / (0.1 * mscale_all * math.log(factor) + 1)
        scaling.update(beta_fast=params.get("beta_fast") or 32.0, beta_slow=params.get("beta_slow") or 1.0,
                       truncate=params.get("truncate", True), attention_factor=attention_factor)
    return scaling


def spec_from_hf_config(cfg: dict, name: str) -> Spec:
    if not isinstance(cfg, dict):
        raise CheckpointError(f"config.json must hold a JSON object, got a {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED:
        raise CheckpointError(f"config.json: model_type {model_type!r} is not supported "
                              f"(supported: {', '.join(SUPPORTED)})")
    if cfg.get("hidden_act", "silu") != "silu":
        _refuse("hidden_act", cfg["hidden_act"], "feed-forwards are SwiGLU with silu")
    heads, hidden = _positive_int(cfg, "num_attention_heads"), _positive_int(cfg, "hidden_size")
    attention = {
        "num_heads": heads,
        "num_kv_heads": cfg.get("num_key_value_heads", heads),
        "head_dim": cfg.get("head_dim") or hidden // heads,
        "bias": bool(cfg.get("attention_bias", False)),
    }
    model = {
        "vocab_size": _required(cfg, "vocab_size"), "hidden_size": hidden,
        "num_layers": _required(cfg, "num_hidden_layers"), "norm_eps": _required(cfg, "rms_norm_eps"),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
    }
    if model_type in DENSE_TYPES:
        _dense_fields(cfg, model_type, attention, model)
        return _spec(name, model)
    moe = {"num_experts": _required(cfg, "num_experts", "num_local_experts"),
           "top_k": _required(cfg, "num_experts_per_tok"), "ffn_size": _required(cfg, "moe_intermediate_size")}
    if model_type == "zaya":
        layer_types = cfg.get("layer_types") or ["hybrid"]
        if not isinstance(layer_types, list) or not all(isinstance(t, str) for t in layer_types):
            raise CheckpointError(f"config.json: layer_types must be a list of names, got {layer_types!r}")
        if set(layer_types) != {"hybrid"}:
            _refuse("layer_types", sorted(set(layer_types)), "sliding-window layers")
        if cfg.get("lm_head_bias"):
            _refuse("lm_head_bias", True, "the LM head is tied and bias-free")
        attention.update(kind="ccgqa", qk_norm="l2", **_rope(cfg, "hybrid"),
                         cca={"depthwise_kernel": cfg.get("cca_time0", 2), "grouped_kernel": cfg.get("cca_time1", 2)})
        model["residual_scaling"] = True
        moe.update(skip_expert=True, router={"kind": "zaya_mlp", "hidden_size": cfg.get("router_hidden_size", 256)},
                   balancing_bias={"enabled": True})
    else:
        if cfg.get("mlp_only_layers"):
            _refuse("mlp_only_layers", cfg["mlp_only_layers"], "every layer must be MoE")
        if cfg.get("decoder_sparse_step", 1) != 1:
            _refuse("decoder_sparse_step", cfg["decoder_sparse_step"], "every layer must be MoE")
        if cfg.get("use_sliding_window"):
            _refuse("use_sliding_window", True, "sliding-window layers")
        attention.update(kind="gqa", qk_norm="rms", **_rope(cfg, None))
        model["residual_scaling"] = False
        moe.update(router={"kind": "linear", "normalize_top_k": bool(cfg.get("norm_topk_prob", False))})
    model.update(attention=attention, moe=moe)
    return _spec(name, model)


def _dense_fields(cfg: dict, model_type: str, attention: dict, model: dict) -> None:
    """The attention and dense-MLP fields of a llama / qwen2 / qwen3 config (`attention`, `model` updated)."""
    if cfg.get("use_sliding_window"):
        _refuse("use_sliding_window", True, "sliding-window layers")
    layer_types = cfg.get("layer_types") or ["full_attention"]
    if not isinstance(layer_types, list) or set(layer_types) != {"full_attention"}:
        _refuse("layer_types", layer_types, "every layer must use full attention")
    if cfg.get("mlp_bias"):
        _refuse("mlp_bias", True, "the dense MLP is bias-free")
    if model_type == "qwen2":  # biases on q/k/v, none on o_proj, whatever the config says
        attention.update(bias=True, output_bias=False)
    attention.update(kind="gqa", qk_norm="rms" if model_type == "qwen3" else "none", **_rope(cfg, None))
    model.update(residual_scaling=False, attention=attention,
                 mlp={"kind": "swiglu", "ffn_size": _required(cfg, "intermediate_size")})


def _spec(name: str, model: dict) -> Spec:
    try:
        # every target: an imported model compiles for any card zdiff knows (`zdiff compile` needs it listed)
        return spec_from_dict({"name": name, "model": model, "targets": list(typing.get_args(TargetName))})
    except SpecError as err:
        raise CheckpointError(f"config.json describes a model zdiff cannot build: {err}") from None


def model_differences(ours: ModelSpec, theirs: ModelSpec) -> list[str]:
    """The model fields (dotted paths) where two model specs differ, ignoring the balancing-bias rule (a
    training setting config.json has no field for; it travels under the zdiff key)."""
    if ours.moe is not None and theirs.moe is not None:  # dense models have no balancing rule
        moe = dataclasses.replace(theirs.moe, balancing_bias=ours.moe.balancing_bias)
        theirs = dataclasses.replace(theirs, moe=moe)
    return [f"model.{path}" for path in _dict_differences(dataclasses.asdict(ours), dataclasses.asdict(theirs))]


def _dict_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in a.keys() | b.keys():
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            out += _dict_differences(a[key], b[key], f"{prefix}{key}.")
        elif a.get(key) != b.get(key):
            out.append(f"{prefix}{key}")
    return sorted(out)


def with_stored_spec(cfg: dict, hf_spec: Spec) -> Spec:
    """The spec `zdiff export` kept under config.json's zdiff key (so import of an export gives back the
    checkpoint's spec exactly), after checking that it describes the model the HF fields describe."""
    stored = cfg.get(ZDIFF_KEY)
    if stored is None:
        return hf_spec
    if not isinstance(stored, dict) or not isinstance(stored.get("spec"), dict):
        raise CheckpointError(f"config.json: {ZDIFF_KEY} must be an object with a spec (as zdiff export writes it), "
                              f"got {str(stored)[:80]!r}")
    try:
        spec = spec_from_dict(stored["spec"])
    except SpecError as err:
        raise CheckpointError(f"config.json: {ZDIFF_KEY}.spec: {err}") from None
    differ = model_differences(spec.model, hf_spec.model)
    if differ:
        raise CheckpointError(f"config.json: {ZDIFF_KEY}.spec and the Hugging Face fields describe different models "
                              f"({short_list(differ)}); edit both or delete the {ZDIFF_KEY} key")
    return spec


def _load_source_tensor(source: TensorSource, model_type: str, name: str, num_experts: int | None):
    """One zdiff tensor from the HF files (stacking per-expert Qwen3 tensors, concatenating a dense gate and up
    projection, when needed)."""
    theirs = hf_name(model_type, name)
    if theirs in source:
        return source.get(theirs), [theirs]
    match = _LAYER_NAME.match(name)
    names = hf_concatenated_names(model_type, name)
    if names:
        missing = [n for n in names if n not in source]
        if missing:
            raise CheckpointError(f"missing tensor(s) {short_list(missing)} (for zdiff {name})")
        return torch.cat([source.get(n) for n in names], dim=0), names
    parts = PER_EXPERT.get(model_type, {}).get(match.group(2)) if match else None
    if parts:
        names = per_expert_names(match.group(1), parts, num_experts)
        base = f"model.layers.{match.group(1)}.mlp.experts"
        missing = [n for n in names if n not in source]
        if missing:
            raise CheckpointError(f"missing tensor(s) {short_list(missing)} (nor fused {theirs})")
        per_expert = [torch.cat([source.get(f"{base}.{e}.{p}.weight") for p in parts], dim=0)
                      for e in range(num_experts)]
        return torch.stack(per_expert), names
    raise CheckpointError(f"missing tensor {theirs} (for zdiff {name})")


def import_hf(hf_dir: str | Path, out_dir: str | Path, force: bool = False, dtype: torch.dtype | None = None,
              allow_nonfinite: bool = False) -> Spec:
    """Convert an HF directory into a zdiff checkpoint at `out_dir` (zdiff.outputs rules: whole or nothing,
    locked, never onto or inside `hf_dir`). Weights with NaN / inf are refused unless `allow_nonfinite`."""
    from ..runtime import Transformer

    hf_dir = Path(hf_dir)
    check_output(out_dir, force, inputs=(hf_dir,))  # fail before reading gigabytes, not after
    if not hf_dir.is_dir():
        raise CheckpointError(f"HF model directory not found: {hf_dir}")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{hf_dir}: no config.json")
    try:
        cfg = json.loads(config_path.read_bytes())
    except ValueError as exc:  # bad JSON, or not UTF-8 at all
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from None
    spec = with_stored_spec(cfg, spec_from_hf_config(cfg, name=hf_dir.resolve().name))
    check_tokenizer_files(hf_dir, spec.model.vocab_size, generation_config=False)
    generation_config, notes = repaired_generation_config(hf_dir, spec.model.vocab_size)
    byte_level = (cfg.get(ZDIFF_KEY) or {}).get("tokenizer") == "bytes"  # a zdiff export of a byte-level model
    if not (hf_dir / "tokenizer.json").is_file() and not byte_level:
        notes.append(f"{hf_dir}: no tokenizer.json; the checkpoint gets the weights only, and text (prompts, "
                     f"training data) will be refused until the model's tokenizer.json is copied into {out_dir}")
    model_type = cfg["model_type"]
    source = TensorSource(hf_dir)
    with torch.device("meta"):
        expected = Transformer(spec.model).state_dict()

    used: set[str] = set()
    converted: dict[str, torch.Tensor] = {}
    for name, meta in tqdm(expected.items(), desc="import tensors", unit="tensor", leave=False):
        if name.endswith("balancing_bias") and model_type == "qwen3_moe":
            converted[name] = torch.zeros(meta.shape)  # Qwen3 has none; zeros leave routing unchanged
            continue
        experts = None if spec.model.moe is None else spec.model.moe.num_experts
        tensor, names = _load_source_tensor(source, model_type, name, experts)
        if tuple(tensor.shape) != tuple(meta.shape):
            raise CheckpointError(f"{names[0]}: shape {list(tensor.shape)}, but config.json implies "
                                  f"{list(meta.shape)} (zdiff {name})")
        check_weight(names[0], tensor, meta.dtype, allow_nonfinite)
        if dtype is not None and tensor.is_floating_point() and not name.endswith("balancing_bias"):
            tensor = tensor.to(dtype)
        converted[name] = tensor
        used.update(names)
    # a tied checkpoint may still store lm_head.weight; anything else unused means a mismatch
    unused = [n for n in source.names() if n not in used and not (spec.model.tie_embeddings and n == "lm_head.weight")]
    if unused:
        raise CheckpointError(f"{hf_dir}: tensor(s) zdiff does not know how to use: {short_list(unused)}")

    with atomic_directory(out_dir, force=force, inputs=(hf_dir,)) as tmp:
        write_checkpoint_files(tmp, spec, converted, metadata={"imported_from": model_type})
        copied = copy_tokenizer(hf_dir, tmp)
        if generation_config is not None:  # without the ids the model cannot have
            (tmp / "generation_config.json").write_text(json.dumps(generation_config, indent=2))
        provenance = {"source": str(hf_dir.resolve()), "model_type": model_type, "tokenizer_files": copied,
                      "hf_config": cfg}
        if "tokenizer.json" not in copied and byte_level:
            provenance["tokenizer"] = "bytes"  # its text is byte ids (train.data.checkpoint_tokenizer reads this)
        (tmp / "import.json").write_text(json.dumps(provenance, indent=1))
    for note in notes:  # after the import succeeded: a failed one reports its error alone
        warnings.warn(note, ZdiffWarning, stacklevel=2)
    return spec
