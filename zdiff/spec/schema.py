"""The spec dataclasses: the single source of truth for everything zdiff generates.

Each field's type annotation is also its schema: ``zdiff.spec.loader`` converts YAML into
these classes by reading the annotations (unknown keys and wrong types are caught there),
and ``zdiff.spec.validate`` checks the rules that relate fields to each other. Field
comments are the user-facing documentation of the spec language.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from ..sampler import DEFAULT_MIX_WEIGHT, SamplerName  # noqa: F401 (DEFAULT_MIX_WEIGHT: its first home)

TargetName = Literal["mi300x", "mi355x", "h100", "h200", "cpu"]
TARGET_NAMES: tuple[str, ...] = ("mi300x", "mi355x", "h100", "h200", "cpu")


@dataclass(frozen=True)
class CCASpec:
    """Compressed convolutional attention: two causal convolutions over the [q|k] channels."""

    depthwise_kernel: int = 2  # taps of the per-channel conv (HF: cca_time0)
    grouped_kernel: int = 2  # taps of the per-head conv, one group per q or k head (HF: cca_time1)

    @property
    def receptive_field(self) -> int:
        """How many predecessors a token's q/k depend on (2 for ZAYA1)."""
        return (self.depthwise_kernel - 1) + (self.grouped_kernel - 1)


@dataclass(frozen=True)
class RopeScalingSpec:
    """Long-context RoPE frequency scaling, as Hugging Face configs state it (`rope_scaling` / `rope_parameters`)."""

    kind: Literal["linear", "llama3", "yarn"]
    factor: float  # linear: every frequency / factor; llama3, yarn: the low frequencies / factor
    original_max_position: int | None = None  # llama3, yarn: the pretraining context (original_max_position_embeddings)
    low_freq_factor: float | None = None  # llama3 only (Llama 3.x: 1)
    high_freq_factor: float | None = None  # llama3 only (Llama 3.x: 4)
    beta_fast: float = 32.0  # yarn: rotations past which a frequency is kept (extrapolated)
    beta_slow: float = 1.0  # yarn: rotations below which a frequency is divided by factor (interpolated)
    truncate: bool = True  # yarn: round the correction range outwards to whole dims (HF's default)
    attention_factor: float | None = None  # yarn: cos/sin scale; null: 0.1 ln(factor) + 1 (resolved by validate)


@dataclass(frozen=True)
class AttentionSpec:
    kind: Literal["gqa", "ccgqa"]
    num_heads: int  # query heads
    num_kv_heads: int
    head_dim: int
    rope_fraction: float = 1.0  # share of each head's dims that RoPE rotates (rotate-half on the first dims)
    rope_theta: float = 10000.0
    rope_scaling: RopeScalingSpec | None = None  # null: plain RoPE
    # none: raw q/k; rms: per-head RMSNorm with weights (Qwen3); l2: q,k scaled to norm sqrt(head_dim),
    # k times a learned per-KV-head temperature (ZAYA1 CCA)
    qk_norm: Literal["none", "rms", "l2"] = "none"
    bias: bool = False  # biases on the q/k/v projections (and on o_proj unless output_bias says otherwise)
    output_bias: bool | None = None  # bias on o_proj; null: as `bias` (Qwen2.5: bias true, output_bias false)
    cca: CCASpec | None = None  # ccgqa only; defaults to CCASpec() there

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def o_proj_bias(self) -> bool:
        return self.bias if self.output_bias is None else self.output_bias

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rope_fraction)


@dataclass(frozen=True)
class RouterSpec:
    kind: Literal["linear", "zaya_mlp"]
    hidden_size: int | None = None  # zaya_mlp: width of the router MLP (ZAYA1: 256)
    normalize_top_k: bool = False  # renormalise the chosen probabilities to sum to 1 (Qwen3: norm_topk_prob)


@dataclass(frozen=True)
class BalancingBiasSpec:
    """Aux-loss-free load balancing: a bias added to the router probabilities for top-k choice only."""

    enabled: bool = False
    rule: Literal["sign"] = "sign"  # b_e += rate * sign(mean load - load_e) after each training step
    update_rate: float = 1e-3
    skip_init: float = -1.0  # initial bias of the skip expert (ZAYA1 starts it at -1)


@dataclass(frozen=True)
class MoESpec:
    num_experts: int
    top_k: int
    ffn_size: int  # expert SwiGLU width I: gate_up is (E, 2I, H), down is (E, H, I)
    router: RouterSpec
    skip_expert: bool = False  # an extra router class whose output is zero (ZAYA1)
    balancing_bias: BalancingBiasSpec = field(default_factory=BalancingBiasSpec)

    @property
    def router_classes(self) -> int:
        return self.num_experts + int(self.skip_expert)


@dataclass(frozen=True)
class MLPSpec:
    """The dense feed-forward of every layer (Llama, Qwen2.5, Qwen3): down(silu(gate(x)) * up(x)), no biases."""

    kind: Literal["swiglu"]
    ffn_size: int  # width I: gate_up is (2I, H), down is (H, I)


@dataclass(frozen=True)
class ModelSpec:
    vocab_size: int
    hidden_size: int
    num_layers: int
    attention: AttentionSpec
    moe: MoESpec | None = None  # a mixture of experts in every layer; exactly one of moe and mlp
    mlp: MLPSpec | None = None  # a dense SwiGLU in every layer (an AR dense checkpoint's feed-forward)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    # ZAYA1: x <- (x + b_r)*s_r + (f(norm(x)) + b_o)*s_o, and (e + b)*s on the embedding output
    residual_scaling: bool = False

    @property
    def dense(self) -> bool:
        """Every layer's feed-forward is the dense MLP (no router, no experts)."""
        return self.mlp is not None

    @property
    def ffn_size(self) -> int:
        """Feed-forward width: the dense MLP's, or one expert's."""
        return self.mlp.ffn_size if self.mlp is not None else self.moe.ffn_size


@dataclass(frozen=True)
class DiffusionLossSpec:
    """Targets of the diffusion (mask) rows: data_weight * CE(data) + distill_weight * D(p_AR || q_draft), with
    p_AR the model's own AR distribution at the same position from the clean rows of the same forward, no
    gradient through it (self-distillation; NOTES.md, "Self-distillation")."""

    data_weight: float = 1.0
    # the recipe study (STUDY.md, 2026-12-06): data + self-distillation at weight 1 drafts better than data
    # alone (zaya1-tiny, 200 conversion steps: lossless T/NFE +0.10 [+0.04, +0.16] paired, logit-mix 0.5 +0.08)
    distill_weight: float = 1.0
    divergence: Literal["forward_kl", "tv"] = "forward_kl"
    # null: every mask slot weighs the same (TiDAR). r in (0, 1): slot s weighs how often decoding judges its
    # draft when each draft is accepted with probability r, under the acceptance levels (objective.py)
    draft_acceptance: float | None = None


@dataclass(frozen=True)
class DiffusionSpec:
    block_size: int = 16
    mask_token_id: int | None = None  # null: no mask token yet (an AR checkpoint before conversion)
    proposals: int = 3  # proposal blocks per decode forward (P)
    acceptance_levels: tuple[int, ...] | None = None  # one per proposal, in 0..block_size-1; null: evenly spread
    loss_alpha: float = 1.0  # L = (alpha * L_AR + L_diff) / (1 + alpha)
    loss: DiffusionLossSpec = DiffusionLossSpec()  # what L_diff trains the drafts toward

    @property
    def max_drafts(self) -> int:
        """m: drafts verified per step (slots 1..b-1 of the chosen proposal block)."""
        return self.block_size - 1


@dataclass(frozen=True)
class SamplerSpec:
    """The checkpoint's default sampler (zdiff.sampler: the names, the host form, the one check of the values)."""

    kind: SamplerName = "lossless"
    mix_weight: float | None = None  # logit_mix only: w in softmax(w*z_AR + (1-w)*z_draft)
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off


@dataclass(frozen=True)
class Spec:
    model: ModelSpec
    name: str = "unnamed"
    diffusion: DiffusionSpec = field(default_factory=DiffusionSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    targets: tuple[TargetName, ...] = ("cpu",)

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    def hash(self) -> str:
        """Stable content hash: generated artefacts record it to say which spec they came from."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _plain(value):
    """asdict keeps tuples; YAML and JSON want lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
