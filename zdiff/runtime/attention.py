"""Attention of the reference model: GQA and ZAYA1's CCGQA, over any TiDAR pattern.

A forward pass is described by per-row `positions` (RoPE), `predecessors` (the row whose
token came just before this one, -1 for none: it drives the CCA convolutions and the
delayed value half) and a boolean `visible` matrix. For a plain causal sequence these are
arange(T), arange(T) - 1 and the lower triangle; TiDAR layouts change all three.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import ModelSpec
from .norms import RMSNorm
from .rope import apply_rope


def predecessor_chain(predecessors: torch.Tensor, length: int) -> list[torch.Tensor]:
    """[self, pred, pred(pred), ...] row indices, `length` entries, -1 where the chain ends."""
    rows = torch.arange(predecessors.shape[-1], device=predecessors.device).expand_as(predecessors)
    chain = [rows]
    for _ in range(length - 1):
        prev = chain[-1]
        step = torch.gather(predecessors, -1, prev.clamp_min(0))
        chain.append(torch.where(prev < 0, prev, step))
    return chain


def gather_rows(x: torch.Tensor, rows: torch.Tensor, fill: torch.Tensor | None = None) -> torch.Tensor:
    """x[b, rows[b, t]] for x (B, T, C) and rows (B, T); rows == -1 give `fill` (default zeros)."""
    picked = torch.gather(x, 1, rows.clamp_min(0)[..., None].expand(-1, -1, x.shape[-1]))
    fill = x.new_zeros(()) if fill is None else fill.to(x.dtype)
    return torch.where((rows < 0)[..., None], fill, picked)


def attention_reference(q, k, v, visible, scale: float) -> torch.Tensor:
    """q (B, T, Hq, D), k/v (B, S, Hkv, D), visible (B, T, S) bool -> (B, T, Hq, D).

    Every row must see at least one key (every TiDAR row sees itself).
    """
    group = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=visible[:, None], scale=scale
    )
    return out.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        a = spec.attention
        self.spec = a
        H, D = spec.hidden_size, a.head_dim
        q_width, kv_width = a.num_heads * D, a.num_kv_heads * D
        self.q_proj = nn.Linear(H, q_width, bias=a.bias)
        self.k_proj = nn.Linear(H, kv_width, bias=a.bias)
        if a.kind == "ccgqa":
            self.v_proj_current = nn.Linear(H, kv_width // 2, bias=a.bias)
            self.v_proj_delayed = nn.Linear(H, kv_width // 2, bias=a.bias)
            channels = q_width + kv_width
            self.conv_depthwise = nn.Conv1d(channels, channels, a.cca.depthwise_kernel, groups=channels)
            self.conv_grouped = nn.Conv1d(channels, channels, a.cca.grouped_kernel, groups=a.num_heads + a.num_kv_heads)
        else:
            self.v_proj = nn.Linear(H, kv_width, bias=a.bias)
        if a.qk_norm == "rms":
            self.q_norm = RMSNorm(D, spec.norm_eps)
            self.k_norm = RMSNorm(D, spec.norm_eps)
        elif a.qk_norm == "l2":
            self.key_temperature = nn.Parameter(torch.ones(a.num_kv_heads))
        self.o_proj = nn.Linear(q_width, H, bias=a.o_proj_bias)

    def project(self, x: torch.Tensor, predecessors: torch.Tensor, cache=None):
        """x (B, T, H) -> q (B, T, Hq, D), k and v (B, T, Hkv, D), before QK norm and RoPE.

        With a layer cache, `predecessors` index the extended rows [cache.state rows | x rows]
        and this pass's projected [q|k] and delayed values are stashed for a later commit.
        """
        a = self.spec
        B, T, _ = x.shape
        q, k = self.q_proj(x), self.k_proj(x)
        if a.kind == "gqa":
            v = self.v_proj(x)
            return q.view(B, T, -1, a.head_dim), k.view(B, T, -1, a.head_dim), v.view(B, T, -1, a.head_dim)
        return self._cca(x, q, k, predecessors, cache)

    def _cca(self, x, q, k, predecessors, cache=None):
        a = self.spec
        B, T, _ = x.shape
        D, group = a.head_dim, a.group_size
        q_heads, k_heads = q.view(B, T, -1, D), k.view(B, T, -1, D)
        # residual paths: q_res = (q + repeat_kv(k)) / 2, k_res = mean of q_res over each KV group
        q_res = (q_heads + k_heads.repeat_interleave(group, dim=2)) * 0.5
        k_res = q_res.view(B, T, a.num_kv_heads, group, D).mean(dim=3)

        # Causal convs along the predecessor chain, as transformers' left zero padding does along time:
        # a missing token contributes a zero [q|k] row, so the depthwise output of a missing
        # position is just its bias.
        qk = torch.cat([q, k], dim=-1)  # (B, T, C)
        delayed = self.v_proj_delayed(x)  # (B, T, kv/2)
        if cache is not None:
            # prepend the committed tail (the last receptive_field tokens) so chains can reach it
            cache.stash_projections(qk, delayed)
            qk = torch.cat([cache.state_qk, qk], dim=1)
            delayed = torch.cat([cache.state_delayed, delayed], dim=1)
        k0, k1 = a.cca.depthwise_kernel, a.cca.grouped_kernel
        chain = predecessor_chain(predecessors, k0 + k1 - 1)
        dw_weight, dw_bias = self.conv_depthwise.weight[:, 0, :], self.conv_depthwise.bias  # (C, k0), (C,)

        def depthwise_at(j: int) -> torch.Tensor:
            """Depthwise output at every row's j-th predecessor; tap k0-1-i reads i tokens further back."""
            return dw_bias + sum(dw_weight[:, k0 - 1 - i] * gather_rows(qk, chain[j + i]) for i in range(k0))

        groups = a.num_heads + a.num_kv_heads
        g_weight = self.conv_grouped.weight.view(groups, D, D, k1)  # (group, out, in, tap)
        grouped = self.conv_grouped.bias.view(groups, D).expand(B, qk.shape[1], groups, D)
        for j in range(k1):
            back = depthwise_at(j).view(B, qk.shape[1], groups, D)
            grouped = grouped + torch.einsum("btgi,goi->btgo", back, g_weight[..., k1 - 1 - j])
        q_width = a.num_heads * D
        grouped = grouped.reshape(B, qk.shape[1], -1)[:, -T:]
        predecessors = predecessors[:, -T:]
        q_out = grouped[..., :q_width].view(B, T, -1, D) + q_res
        k_out = grouped[..., q_width:].view(B, T, -1, D) + k_res

        # values: first half from this token, second half from its predecessor (v_delayed of a zero
        # input when there is none, which is the bias or zero)
        no_pred = self.v_proj_delayed(x.new_zeros(x.shape[-1]))
        v = torch.cat([self.v_proj_current(x), gather_rows(delayed, predecessors, fill=no_pred)], dim=-1)
        return q_out, k_out, v.view(B, T, -1, D)

    def normalize_qk(self, q, k):
        a = self.spec
        if a.qk_norm == "rms":
            return self.q_norm(q), self.k_norm(k)
        if a.qk_norm == "l2":
            eps = torch.finfo(q.dtype).eps
            scale = math.sqrt(a.head_dim)
            q = q * (scale / q.norm(dim=-1, keepdim=True).clamp_min(eps))
            k = k * (scale / k.norm(dim=-1, keepdim=True).clamp_min(eps))
            return q, k * self.key_temperature[None, None, :, None]
        return q, k

    def forward(self, x, cos, sin, predecessors, visible, cache=None):
        """visible is (B, T, T) over this pass's rows, or with a cache (B, T, cache slots + T)."""
        B, T, _ = x.shape
        q, k, v = self.project(x, predecessors, cache)
        q, k = self.normalize_qk(q, k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            cache.stash_kv(k, v)
            k, v = torch.cat([cache.k, k], dim=1), torch.cat([cache.v, v], dim=1)
        out = attention_reference(q, k, v, visible, scale=self.spec.head_dim ** -0.5)
        return self.o_proj(out.reshape(B, T, -1))

