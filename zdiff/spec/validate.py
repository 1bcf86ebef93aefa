"""Rules that relate spec fields to each other, and the defaults that depend on them.

``validate`` returns a new, fully resolved Spec (derived defaults filled in), so every
later stage reads concrete values and never re-derives a default on its own.
"""

from __future__ import annotations

import dataclasses
import math
import re

from ..errors import MISSING, SpecError
from ..limits import SPEC_MAXIMUM, SPEC_MINIMUM, SPEC_NAME_MAX_CHARS
from ..sampler import sampling_problem
from .schema import CCASpec, ModelSpec, RopeScalingSpec, Spec

# `name` is a path component of default outputs (build/<name>/<target>, the kernel cache):
# printable, no separator, not a dot directory
_NAME_CHARS = re.compile(r"^[^\x00-\x1f\x7f/\\]+$")


def _positive(path: str, value: int | float) -> None:
    if value <= 0:
        raise SpecError(path, value, "must be positive")


def _at_least(path: str, value: int, low: int) -> None:
    if value < low:
        raise SpecError(path, value, f"must be at least {low}")


def default_acceptance_levels(block_size: int, proposals: int) -> tuple[int, ...]:
    """P levels spread evenly over 0..b-1, always including 0 (every draft rejected).

    With P = b this is every level, as in the TiDAR paper. The cost model (zdiff cost)
    recommends levels for a measured acceptance distribution; this is only the fallback.
    """
    top = block_size - 1
    if proposals == 1:
        return (0,)
    return tuple(sorted({round(i * top / (proposals - 1)) for i in range(proposals)}))


def _field(spec: Spec, path: str):
    """The value at a dotted path, None when a section on the way is absent (e.g. cca of a gqa model)."""
    value = spec
    for part in path.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def check_bounds(spec: Spec) -> None:
    """The documented upper (and few lower) bounds of zdiff.limits, before any rule uses a value."""
    for path, top in SPEC_MAXIMUM.items():
        value = _field(spec, path)
        if value is not None and value > top:
            raise SpecError(path, value, f"must be at most {_number(top)} (zdiff.limits.SPEC_MAXIMUM)")
    for path, low in SPEC_MINIMUM.items():
        value = _field(spec, path)
        if value is not None and value < low:
            raise SpecError(path, value, f"must be at least {_number(low)} (zdiff.limits.SPEC_MINIMUM)")


def _number(bound: int | float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def check_name(name: str) -> None:
    if not name.strip():
        raise SpecError("name", name, "must not be blank")
    if len(name) > SPEC_NAME_MAX_CHARS:
        raise SpecError("name", name, f"must be at most {SPEC_NAME_MAX_CHARS} characters (it names output directories)")
    if not _NAME_CHARS.match(name) or name in (".", ".."):
        raise SpecError("name", name, "must be usable as a directory name: no '/', '\\', control characters, "
                        "'.' or '..'")


def validate(spec: Spec) -> Spec:
    """The spec with every field checked (a SpecError naming the first bad one) and defaults resolved."""
    check_name(spec.name)
    check_bounds(spec)
    model = spec.model
    for name in ("vocab_size", "hidden_size", "num_layers"):
        _positive(f"model.{name}", getattr(model, name))
    _positive("model.norm_eps", model.norm_eps)

    attn = _validate_attention(model)
    _check_feed_forward(model)
    attn = dataclasses.replace(attn, rope_scaling=_rope_scaling(attn.rope_scaling), output_bias=attn.o_proj_bias)
    model = dataclasses.replace(model, attention=attn)
    diff = _validate_diffusion(spec.diffusion, model.vocab_size)
    _validate_sampler(spec.sampler)
    if not spec.targets:
        raise SpecError("targets", [], "must name at least one target")
    for i, target in enumerate(spec.targets):
        if target in spec.targets[:i]:
            raise SpecError(f"targets[{i}]", target, "is listed twice")
    return dataclasses.replace(spec, model=model, diffusion=diff)


def _validate_attention(model: ModelSpec):
    """model.attention checked, with ccgqa's CCA defaults filled in."""
    attn = model.attention
    for name in ("num_heads", "num_kv_heads", "head_dim"):
        _positive(f"model.attention.{name}", getattr(attn, name))
    if attn.num_heads % attn.num_kv_heads:
        raise SpecError(
            "model.attention.num_heads", attn.num_heads,
            f"must be divisible by model.attention.num_kv_heads ({attn.num_kv_heads})",
        )
    if attn.head_dim % 16:
        raise SpecError("model.attention.head_dim", attn.head_dim,
                        "must be a multiple of 16 (matrix-instruction tiles)")
    if not 0.0 < attn.rope_fraction <= 1.0:
        raise SpecError("model.attention.rope_fraction", attn.rope_fraction, "must be in (0, 1]")
    rotary = attn.head_dim * attn.rope_fraction
    if rotary != int(rotary) or int(rotary) % 2:
        raise SpecError(
            "model.attention.rope_fraction", attn.rope_fraction,
            f"must rotate an even whole number of the {attn.head_dim} head dims (gives {rotary:g})",
        )
    _positive("model.attention.rope_theta", attn.rope_theta)
    if attn.kind == "ccgqa":
        cca = attn.cca or CCASpec()
        _at_least("model.attention.cca.depthwise_kernel", cca.depthwise_kernel, 1)
        _at_least("model.attention.cca.grouped_kernel", cca.grouped_kernel, 1)
        if attn.num_kv_heads * attn.head_dim % 2:
            raise SpecError("model.attention.num_kv_heads", attn.num_kv_heads,
                            "ccgqa splits the value width in halves; kv width must be even")
        attn = dataclasses.replace(attn, cca=cca)
    elif attn.cca is not None:
        raise SpecError("model.attention.cca", attn.cca, "is only allowed with kind: ccgqa")
    return attn


def _validate_diffusion(diff, vocab_size: int):
    """diffusion checked, with its acceptance levels resolved."""
    _at_least("diffusion.block_size", diff.block_size, 1)
    if diff.mask_token_id is not None and not 0 <= diff.mask_token_id < vocab_size:
        raise SpecError("diffusion.mask_token_id", diff.mask_token_id,
                        f"must be in 0..{vocab_size - 1} (model.vocab_size)")
    _at_least("diffusion.proposals", diff.proposals, 1)
    if diff.proposals > diff.block_size:
        raise SpecError("diffusion.proposals", diff.proposals,
                        f"cannot exceed the {diff.block_size} acceptance levels 0..block_size-1")
    levels = _acceptance_levels(diff)
    if diff.loss_alpha < 0:
        raise SpecError("diffusion.loss_alpha", diff.loss_alpha, "must not be negative")
    for name in ("data_weight", "distill_weight"):
        if getattr(diff.loss, name) < 0:
            raise SpecError(f"diffusion.loss.{name}", getattr(diff.loss, name), "must not be negative")
    if diff.loss.data_weight + diff.loss.distill_weight == 0:
        raise SpecError("diffusion.loss.distill_weight", 0.0, "and data_weight are both 0: the drafts get no target")
    rate = diff.loss.draft_acceptance
    if rate is not None and not 0 < rate < 1:
        raise SpecError("diffusion.loss.draft_acceptance", rate,
                        "must be in (0, 1) (a per-draft acceptance probability) or null (uniform slot weights)")
    return dataclasses.replace(diff, acceptance_levels=levels)


def _acceptance_levels(diff) -> tuple[int, ...]:
    """diffusion.acceptance_levels as listed (checked), or spread evenly over the proposals."""
    levels = diff.acceptance_levels
    if levels is None:
        levels = default_acceptance_levels(diff.block_size, diff.proposals)
        if len(levels) != diff.proposals:
            raise SpecError("diffusion.acceptance_levels", None,
                            "cannot be spread evenly for these proposals; list them")
    else:
        if len(levels) != diff.proposals:
            raise SpecError("diffusion.acceptance_levels", list(levels),
                            f"must list exactly diffusion.proposals ({diff.proposals}) levels")
        for i, level in enumerate(levels):
            if not 0 <= level <= diff.max_drafts:
                raise SpecError(f"diffusion.acceptance_levels[{i}]", level,
                                f"must be in 0..{diff.max_drafts} (block_size - 1)")
        if list(levels) != sorted(set(levels)):
            raise SpecError("diffusion.acceptance_levels", list(levels), "must be strictly increasing")
        if levels[0] != 0:
            # a step that accepts no draft reads its next drafts from the level-0 block
            raise SpecError("diffusion.acceptance_levels", list(levels),
                            "must include 0 (the block used when every draft is rejected)")
    return tuple(levels)


def _check_feed_forward(model: ModelSpec) -> None:
    """Exactly one of model.moe (experts) and model.mlp (dense), each with its own rules."""
    if model.moe is not None and model.mlp is not None:
        raise SpecError("model.mlp", MISSING, "cannot be given together with model.moe (a layer's "
                        "feed-forward is either dense or a mixture of experts)")
    if model.mlp is not None:
        _positive("model.mlp.ffn_size", model.mlp.ffn_size)
        return
    if model.moe is None:
        raise SpecError("model.moe", MISSING, "is required (or model.mlp for a dense model)")
    moe = model.moe
    for name in ("num_experts", "top_k", "ffn_size"):
        _positive(f"model.moe.{name}", getattr(moe, name))
    if moe.top_k > moe.num_experts:
        raise SpecError("model.moe.top_k", moe.top_k, f"must not exceed model.moe.num_experts ({moe.num_experts})")
    router = moe.router
    if router.kind == "zaya_mlp":
        if router.hidden_size is None:
            raise SpecError("model.moe.router.hidden_size", None, "is required for router kind zaya_mlp")
        _positive("model.moe.router.hidden_size", router.hidden_size)
    elif router.hidden_size is not None:
        raise SpecError("model.moe.router.hidden_size", router.hidden_size, "is only used by router kind zaya_mlp")
    if moe.balancing_bias.update_rate < 0:
        raise SpecError("model.moe.balancing_bias.update_rate", moe.balancing_bias.update_rate, "must not be negative")


def _rope_scaling(scaling: RopeScalingSpec | None) -> RopeScalingSpec | None:
    """Checks the fields of the scaling kind, and resolves yarn's default attention factor."""
    if scaling is None:
        return None
    where = "model.attention.rope_scaling"
    _positive(f"{where}.factor", scaling.factor)
    needs = {"linear": (), "llama3": ("original_max_position", "low_freq_factor", "high_freq_factor"),
             "yarn": ("original_max_position",)}[scaling.kind]
    for name in ("original_max_position", "low_freq_factor", "high_freq_factor"):
        value = getattr(scaling, name)
        if name in needs and value is None:
            raise SpecError(f"{where}.{name}", None, f"is required for kind {scaling.kind}")
        if name not in needs and value is not None:
            raise SpecError(f"{where}.{name}", value, f"is not used by kind {scaling.kind}")
        if value is not None:
            _positive(f"{where}.{name}", value)
    if scaling.kind == "llama3" and scaling.high_freq_factor <= scaling.low_freq_factor:
        raise SpecError(f"{where}.high_freq_factor", scaling.high_freq_factor,
                        f"must exceed low_freq_factor ({scaling.low_freq_factor})")
    if scaling.kind != "yarn":
        if scaling.attention_factor is not None:
            raise SpecError(f"{where}.attention_factor", scaling.attention_factor, "is only used by kind yarn")
        return scaling
    _positive(f"{where}.beta_fast", scaling.beta_fast)
    _positive(f"{where}.beta_slow", scaling.beta_slow)
    factor = scaling.attention_factor
    if factor is None:  # YaRN's default (transformers' yarn_get_mscale)
        factor = 1.0 if scaling.factor <= 1 else 0.1 * math.log(scaling.factor) + 1.0
    _positive(f"{where}.attention_factor", factor)
    return dataclasses.replace(scaling, attention_factor=factor)


def _validate_sampler(sampler) -> None:
    """The spec's own rules (mix_weight only with logit_mix; a default temperature must suit every sampler a
    request may switch to, so it is positive even for greedy), then the one rule of zdiff.sampler."""
    if sampler.kind == "logit_mix" and sampler.mix_weight is None:
        raise SpecError("sampler.mix_weight", None, "is required for kind logit_mix")
    if sampler.kind != "logit_mix" and sampler.mix_weight is not None:
        raise SpecError("sampler.mix_weight", sampler.mix_weight, "is only used by kind logit_mix")
    _positive("sampler.temperature", sampler.temperature)
    mix_weight = 1.0 if sampler.mix_weight is None else sampler.mix_weight
    problem = sampling_problem(sampler.kind, sampler.temperature, sampler.top_k, sampler.top_p, mix_weight)
    if problem is not None:
        name, value, reason = problem
        raise SpecError(f"sampler.{'kind' if name == 'sampler' else name}", value, reason)
