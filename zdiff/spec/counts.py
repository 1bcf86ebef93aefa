"""Closed-form parameter, FLOP and cache-size counts of a model spec.

The reference model's ``parameters()`` must sum to exactly ``total_params`` (tested), so
these formulas double as a checked description of what a spec instantiates.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import ModelSpec


@dataclass(frozen=True)
class ModelCounts:
    embedding_params: int  # the V x H input embedding (shared with the LM head when tied)
    lm_head_params: int  # 0 when tied
    attention_params: int  # all layers
    router_params: int  # all layers
    expert_params: int  # all layers, all experts
    mlp_params: int  # all layers: the dense SwiGLU (0 for a mixture of experts)
    other_params: int  # norms, residual scales
    active_expert_params: int  # all layers, top_k experts per token
    kv_bytes_per_token: int
    cca_state_bytes_per_sequence: int
    dtype_bytes: int

    @property
    def total_params(self) -> int:
        return (self.embedding_params + self.lm_head_params + self.attention_params + self.router_params
                + self.expert_params + self.mlp_params + self.other_params)

    @property
    def non_embedding_params(self) -> int:
        return self.total_params - self.embedding_params - self.lm_head_params

    @property
    def active_params(self) -> int:
        """Per token, without the embedding matrix and LM head (the usual 'active' figure; every weight when
        dense)."""
        return self.non_embedding_params - self.expert_params + self.active_expert_params

    def decode_flops_per_token(self, spec: ModelSpec, context: int) -> int:
        """One AR decode step: 2 FLOPs per active weight, the LM head, and attention over `context` keys."""
        lm_head = spec.vocab_size * spec.hidden_size
        attention = 4 * spec.attention.num_heads * spec.attention.head_dim * context * spec.num_layers
        return 2 * (self.active_params + lm_head) + attention


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def count_model(spec: ModelSpec, dtype_bytes: int = 2) -> ModelCounts:
    H, L = spec.hidden_size, spec.num_layers
    attn = spec.attention
    q_width, kv_width = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim

    per_layer_attn = (_linear(H, q_width, attn.bias) + _linear(H, kv_width, attn.bias)
                      + _linear(q_width, H, attn.o_proj_bias))
    cca_state = 0
    if attn.kind == "ccgqa":
        per_layer_attn += 2 * _linear(H, kv_width // 2, attn.bias)  # current and delayed value halves
        channels = q_width + kv_width
        per_layer_attn += channels * attn.cca.depthwise_kernel + channels  # depthwise conv + bias
        per_layer_attn += channels * attn.head_dim * attn.cca.grouped_kernel + channels  # grouped conv + bias
        # conv state: the last receptive_field projected [q|k] rows; value state: one delayed half
        cca_state = L * (channels * attn.cca.receptive_field + kv_width // 2) * dtype_bytes
    else:
        per_layer_attn += _linear(H, kv_width, attn.bias)
    per_layer_attn += {"none": 0, "rms": 2 * attn.head_dim, "l2": attn.num_kv_heads}[attn.qk_norm]

    router, per_expert = _router_params(spec), 3 * spec.ffn_size * H
    experts, active = (0, 0) if spec.dense else (spec.moe.num_experts, spec.moe.top_k)
    other = L * 2 * H + H  # two norms per layer + final norm
    if spec.residual_scaling:
        other += L * 2 * 4 * H + 2 * H

    return ModelCounts(
        embedding_params=spec.vocab_size * H,
        lm_head_params=0 if spec.tie_embeddings else spec.vocab_size * H,
        attention_params=L * per_layer_attn,
        router_params=router,
        expert_params=L * experts * per_expert,
        mlp_params=L * per_expert if spec.dense else 0,
        other_params=other,
        active_expert_params=L * active * per_expert,
        kv_bytes_per_token=2 * kv_width * L * dtype_bytes,
        cca_state_bytes_per_sequence=cca_state,
        dtype_bytes=dtype_bytes,
    )


def _router_params(spec: ModelSpec) -> int:
    if spec.dense:
        return 0
    L, H, moe = spec.num_layers, spec.hidden_size, spec.moe
    classes = moe.router_classes
    if moe.router.kind == "linear":
        return L * _linear(H, classes, False)
    R = moe.router.hidden_size
    per_layer = _linear(H, R, True) + R + 2 * _linear(R, R, True) + _linear(R, classes, False)  # + norm
    return L * per_layer + (L - 1) * R  # the previous-state scale exists from layer 1 on
