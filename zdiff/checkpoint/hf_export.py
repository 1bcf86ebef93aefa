"""Export zdiff checkpoints as Hugging Face directories (`zaya`, `qwen3_moe`, `llama`, `qwen2`, `qwen3`): the
inverse of hf_import.

The tensor names come from hf_import's per-model-type tables (one table, read in both directions); the
config.json fields are written here and checked by reading them back with hf_import's own reader, so an
export is exactly what `zdiff import` would turn into the same model. The zdiff spec (diffusion settings,
sampler defaults, targets, name, balancing rule) rides along under config.json's `zdiff` key, which makes
import of an export give back the checkpoint bit for bit.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import CheckpointError, ZdiffError
from ..outputs import atomic_directory, check_output
from ..spec import Spec
from ..tokenize import ByteTokenizer
from .hf_import import (
    LAYER_NAMES,
    PER_EXPERT,
    SUPPORTED,
    ZDIFF_KEY,
    hf_concatenated_names,
    hf_name,
    model_differences,
    per_expert_names,
    spec_from_hf_config,
)
from .store import check_tensor_names, checkpoint_spec, copy_tokenizer, short_list
from .tensors import TensorSource, plan_shards, shard_file_names, write_shards

EXPORT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_ARCHITECTURES = {"zaya": "ZayaForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "llama": "LlamaForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_HF_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}


def parse_size(text: str) -> int:
    """'5GB' (10^9, as transformers counts), '500MiB', '100KB' or plain bytes -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else ""
    if not match or (unit and unit not in _UNITS):
        raise ZdiffError(f"--shard-size must be a size like 5GB, 500MB or 2GiB, got {text!r}")
    size = int(float(match.group(1)) * _UNITS[unit or "B"])
    if size <= 0:
        raise ZdiffError(f"--shard-size must be positive, got {text!r}")
    return size


def _common_config(spec: Spec) -> dict:
    m = spec.model
    return {
        "vocab_size": m.vocab_size, "hidden_size": m.hidden_size, "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.attention.num_heads, "num_key_value_heads": m.attention.num_kv_heads,
        "head_dim": m.attention.head_dim, "attention_bias": m.attention.bias, "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings, "hidden_act": "silu",
        **({"num_experts": m.moe.num_experts, "num_experts_per_tok": m.moe.top_k,
            "moe_intermediate_size": m.moe.ffn_size} if m.moe is not None else {}),
    }


def _moe(spec: Spec, model_type: str):
    if spec.model.moe is None:
        raise CheckpointError(f"{model_type} is a mixture of experts; this model has a dense model.mlp")
    return spec.model.moe


def _zaya_config(spec: Spec) -> dict:
    _moe(spec, "zaya")
    a, L = spec.model.attention, spec.model.num_layers
    cca = a.cca
    return {
        "layer_types": ["hybrid"] * L, "lm_head_bias": False,
        "rope_parameters": {"hybrid": {"rope_type": "default", "rope_theta": a.rope_theta,
                                       "partial_rotary_factor": a.rope_fraction}},
        "router_hidden_size": spec.model.moe.router.hidden_size,
        "cca_time0": cca.depthwise_kernel if cca else 2, "cca_time1": cca.grouped_kernel if cca else 2,
    }


def _qwen3_moe_config(spec: Spec) -> dict:
    _moe(spec, "qwen3_moe")
    a = spec.model.attention
    if a.rope_fraction != 1.0:  # transformers' Qwen3-MoE rotates whole heads
        raise CheckpointError(f"qwen3_moe rotates whole heads; model.attention.rope_fraction is {a.rope_fraction}")
    return {
        "rope_parameters": {"rope_type": "default", "rope_theta": a.rope_theta}, "rope_theta": a.rope_theta,
        "norm_topk_prob": spec.model.moe.router.normalize_top_k, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "use_sliding_window": False, "intermediate_size": spec.model.moe.ffn_size,
    }


def _rope_parameters(attention) -> dict:
    """rope_parameters as transformers 5 writes them (the reader also takes the older rope_scaling key)."""
    params = {"rope_type": "default", "rope_theta": attention.rope_theta}
    r = attention.rope_scaling
    if r is not None:
        params.update(rope_type=r.kind, factor=r.factor)
        if r.original_max_position is not None:
            params["original_max_position_embeddings"] = r.original_max_position
        if r.kind == "llama3":
            params.update(low_freq_factor=r.low_freq_factor, high_freq_factor=r.high_freq_factor)
        if r.kind == "yarn":
            params.update(beta_fast=r.beta_fast, beta_slow=r.beta_slow, truncate=r.truncate,
                          attention_factor=r.attention_factor)
    return params


def _dense_config(spec: Spec) -> dict:
    """llama / qwen2 / qwen3: which of them reads back as this model is decided by hf_config (q/k norm: qwen3;
    biases on q/k/v only: qwen2; the reader fixes what each type implies)."""
    a = spec.model.attention
    if spec.model.mlp is None:
        raise CheckpointError("the dense model types have one SwiGLU MLP per layer; this model has model.moe")
    if a.rope_fraction != 1.0:
        raise CheckpointError(f"dense model types rotate whole heads; model.attention.rope_fraction is "
                              f"{a.rope_fraction}")
    return {"rope_parameters": _rope_parameters(a), "rope_theta": a.rope_theta, "mlp_bias": False,
            "intermediate_size": spec.model.mlp.ffn_size, "use_sliding_window": False}


# model type -> its config.json fields; with hf_import.LAYER_NAMES (tensor names) and spec_from_hf_config
# (the reader) this is all a model type needs
CONFIG_WRITERS = {"zaya": _zaya_config, "qwen3_moe": _qwen3_moe_config, "llama": _dense_config,
                  "qwen2": _dense_config, "qwen3": _dense_config}


def hf_config(spec: Spec, base: dict | None = None) -> tuple[str, dict]:
    """(model type, config.json) for a spec: the first model type whose config reads back as this very model.

    `base`: the config the checkpoint was imported from (its other fields, e.g. token ids, are kept)."""
    reasons = []
    for model_type in SUPPORTED:
        try:
            cfg = {**(base or {}), **_common_config(spec), **CONFIG_WRITERS[model_type](spec),
                   "model_type": model_type, "architectures": [_ARCHITECTURES[model_type]]}
            differ = model_differences(spec.model, spec_from_hf_config(cfg, spec.name).model)
        except CheckpointError as err:
            reasons.append(f"{model_type}: {err}")
            continue
        if not differ:
            return model_type, cfg
        reasons.append(f"{model_type} cannot express {short_list(differ)}")
    raise CheckpointError(f"{spec.name}: no Hugging Face model type describes this model ({'; '.join(reasons)})")


@dataclass(frozen=True)
class HFTensor:
    """One tensor of the export: its HF name, the zdiff tensor it comes from, and which part of it."""

    name: str
    source: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    expert: int | None = None  # per-expert layouts: the expert ...
    rows: tuple[int, int] | None = None  # ... and its rows in the stacked zdiff tensor


def _has_balancing_bias(model_type: str) -> bool:
    return "moe.router.balancing_bias" in LAYER_NAMES[model_type]


def hf_tensor_plan(spec: Spec, model_type: str, dtype: torch.dtype | None = None,
                   stored: dict[str, torch.dtype] | None = None) -> list[HFTensor]:
    """Every tensor of the export, from the spec alone (a meta-device model: no weights are read). Without
    `dtype` each tensor keeps its `stored` dtype (the checkpoint's; default the model's fp32)."""
    from ..runtime import Transformer

    with torch.device("meta"):
        expected = Transformer(spec.model).state_dict()
    plan = []
    for name, meta in expected.items():
        if name.endswith("balancing_bias") and not _has_balancing_bias(model_type):
            continue  # no HF field; export checks that it is zero, import puts zeros back
        kept = (stored or {}).get(name) or meta.dtype
        out_dtype = kept if dtype is None or name.endswith("balancing_bias") else dtype
        layer, _, rest = name.partition(".")[2].partition(".")
        concatenated = hf_concatenated_names(model_type, name)
        if concatenated:  # a dense gate_up: HF's gate_proj and up_proj, equal row blocks
            width = meta.shape[0] // len(concatenated)
            plan += [HFTensor(part, name, (width, *meta.shape[1:]), out_dtype, rows=(i * width, (i + 1) * width))
                     for i, part in enumerate(concatenated)]
            continue
        parts = PER_EXPERT.get(model_type, {}).get(rest) if name.startswith("layers.") else None
        if not parts:
            plan.append(HFTensor(hf_name(model_type, name), name, tuple(meta.shape), out_dtype))
            continue
        experts, rows, cols = meta.shape
        width = rows // len(parts)
        names = iter(per_expert_names(layer, parts, experts))
        plan += [HFTensor(next(names), name, (width, cols), out_dtype, e, (i * width, (i + 1) * width))
                 for e in range(experts) for i in range(len(parts))]
    return plan


def hf_index(spec: Spec, dtype: torch.dtype | None = None, shard_bytes: int = 5 * 10**9) -> dict:
    """The model.safetensors.index.json an export of this spec gets (computed without weights)."""
    model_type, _ = hf_config(spec)
    plan = hf_tensor_plan(spec, model_type, dtype or torch.bfloat16)
    shards = plan_shards(((t.name, _nbytes(t)) for t in plan), shard_bytes)
    files = shard_file_names(len(shards))
    return {"metadata": {"total_size": sum(_nbytes(t) for t in plan)},
            "weight_map": {name: file for file, names in zip(files, shards) for name in names}}


def _nbytes(t: HFTensor) -> int:
    n = 1
    for d in t.shape:
        n *= d
    return n * t.dtype.itemsize


def _generation_config(spec: Spec, base: dict, tokenizer_json: bool) -> dict:
    """generation_config.json for a checkpoint without one: the spec's sampler defaults, and the special ids of
    the imported config, else of the byte tokenizer (a byte-level model)."""
    s = spec.sampler
    config = {"do_sample": s.kind != "greedy", "temperature": s.temperature}
    if s.top_k:
        config["top_k"] = s.top_k
    if s.top_p < 1.0:
        config["top_p"] = s.top_p
    byte = ByteTokenizer()
    for key, byte_id in (("bos_token_id", byte.bos_id), ("eos_token_id", byte.eos_id), ("pad_token_id", None)):
        value = base.get(key, None if tokenizer_json or byte.eos_id >= spec.model.vocab_size else byte_id)
        if value is not None:
            config[key] = value
    return config


def _base_config(directory: Path) -> dict:
    """config.json of the HF model this checkpoint was imported from (import.json), if any."""
    try:
        base = json.loads((directory / "import.json").read_text()).get("hf_config")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(base, dict):
        return {}
    return {k: v for k, v in base.items() if k not in (ZDIFF_KEY, "torch_dtype", "dtype", "architectures")}


def export_hf(checkpoint_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None,
              shard_bytes: int = 5 * 10**9, force: bool = False) -> Path:
    """Write a zdiff checkpoint as a Hugging Face directory at `out_dir` (zdiff.outputs rules: whole or nothing,
    never onto or inside the checkpoint). dtype None keeps the checkpoint's (an exact round trip)."""
    checkpoint = Path(checkpoint_dir)
    check_output(out_dir, force, inputs=(checkpoint,))
    spec = checkpoint_spec(checkpoint)
    source = TensorSource(checkpoint)
    base = _base_config(checkpoint)
    model_type, cfg = hf_config(spec, base)
    plan = hf_tensor_plan(spec, model_type, dtype, {name: source.dtype(name) for name in source.names()})
    with torch.device("meta"):
        from ..runtime import Transformer

        check_tensor_names(checkpoint, Transformer(spec.model).state_dict(), source)
    for name in source.names():
        if name.endswith("balancing_bias") and not _has_balancing_bias(model_type) and source.get(name).any():
            raise CheckpointError(f"{checkpoint}: {name} is not zero, and {model_type} has no balancing biases "
                                  "(export would change the routing)")
    tokenizer_json = (checkpoint / "tokenizer.json").is_file()
    out_dtype = dtype or source.dtype("embed.weight")
    stored = {"format": 1, "spec": spec.to_dict()}
    if not tokenizer_json:  # zdiff's byte-level ids (import records it: a learned vocabulary without files is not)
        stored["tokenizer"] = "bytes"
    cfg.update(dtype=_HF_DTYPE_NAMES.get(out_dtype, str(out_dtype).removeprefix("torch.")), **{ZDIFF_KEY: stored})
    generation = _generation_config(spec, base, tokenizer_json)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        cfg.setdefault(key, generation.get(key))

    stacked = functools.lru_cache(maxsize=1)(source.get)  # per-expert parts read their stacked tensor once
    by_name = {t.name: t for t in plan}

    def get(name: str) -> torch.Tensor:
        t = by_name[name]
        tensor = stacked(t.source)
        if t.expert is not None:
            tensor = tensor[t.expert, t.rows[0]:t.rows[1]]
        elif t.rows is not None:
            tensor = tensor[t.rows[0]:t.rows[1]]
        return tensor.to(t.dtype)

    shards = plan_shards(((t.name, _nbytes(t)) for t in plan), shard_bytes)
    with atomic_directory(out_dir, force=force, inputs=(checkpoint,)) as tmp, \
            tqdm(total=len(plan), desc="export tensors", unit="tensor", leave=False) as progress:
        write_shards(tmp, shards, get, metadata={"format": "pt"}, progress=progress)
        copied = copy_tokenizer(checkpoint, tmp)
        if "generation_config.json" not in copied:
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=1))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    return Path(out_dir)


__all__ = ["CONFIG_WRITERS", "EXPORT_DTYPES", "LAYER_NAMES", "export_hf", "hf_config", "hf_index", "hf_tensor_plan",
           "parse_size"]
