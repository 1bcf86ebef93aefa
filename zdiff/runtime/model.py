"""The reference model: plain PyTorch, exact, any spec, any TiDAR pattern.

Every kernel zdiff generates is tested against this module, and this module is tested
against transformers (ZAYA1, Qwen3-MoE). It favours clarity over speed.

There is one layer loop (`Transformer.forward_full`) and one block structure (`Block.forward`):
a block is made of the operations of an `Ops` object (norm, residual update fused with the
next norm, attention, MoE). `ReferenceOps` are the torch modules themselves; the generated
model (`backend="triton"`, templates/model.py.jinja) swaps in kernel ops, Liger-style, and
keeps the parameters, the state dict, the loop and the block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ZdiffError
from ..pattern.batch import layout_visible
from ..spec import ModelSpec
from .attention import Attention
from .mlp import DenseMLP
from .moe import MoE, Routing, draft_restriction
from .norms import ResidualScaling, RMSNorm
from .rope import rope_cos_sin


@dataclass
class ForwardOutput:
    """What a forward pass produced. Logits are computed only when asked for: training takes the loss
    from `hidden` and `head` in chunks (zdiff.train.linear_ce) and never holds (B, T, V) logits."""

    hidden: torch.Tensor  # (B, T, H) final-norm output, model dtype
    head: torch.Tensor  # (V, H) LM head (the embedding when tied)
    routings: list[Routing | None]  # one per layer, for load statistics and balancing-bias updates; None: dense

    @property
    def logits(self) -> torch.Tensor:
        """(B, T, V) fp32."""
        return (self.hidden @ self.head.t()).float()


class ReferenceOps:
    """The operations of a block, computed by the reference modules (plain torch)."""

    def attention_mask(self, layout, visible, B: int, T: int, cache, device):
        """What `attention` reads to know who sees whom: the dense (B or 1, T, keys) mask (from `layout` when no
        mask is given; a plain causal pass by default)."""
        if visible is None and layout is not None:
            visible = layout_visible(layout, T, 0 if cache is None else cache.max_len, device)
        return torch.ones(T, T, dtype=torch.bool, device=device).tril() if visible is None else visible

    def predecessors(self, predecessors: torch.Tensor) -> torch.Tensor:
        """The predecessor indices in the form `attention` reads (converted once per forward, not per layer)."""
        return predecessors

    def norm(self, x: torch.Tensor, norm) -> torch.Tensor:
        return norm(x)

    def add_norm(self, scaling, x: torch.Tensor, out: torch.Tensor, norm):
        """(x + out, or the scaled residual update; the fp32 stream) and its RMSNorm in the parameter dtype."""
        x = scaling(out, x) if scaling is not None else x + out
        return x, self.norm(x.to(norm.weight.dtype), norm)

    def attention(self, attn, x, cos, sin, predecessors, mask, cache):
        return attn(x, cos, sin, predecessors, mask.expand(x.shape[0], x.shape[1], mask.shape[-1]), cache)

    def moe(self, moe, x, router_state, restrict=None):
        """(out, next router state, routing); `restrict`: the draft rows' expert budget (runtime.moe)."""
        return moe(x, router_state, restrict)

    def mlp(self, mlp, x):
        """The dense feed-forward (x (B, T, H) -> (B, T, H))."""
        return mlp(x)


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.attn = Attention(spec)
        self.dense = spec.dense
        # a dense layer's feed-forward is `mlp`, a mixture of experts' `moe` (each with its pre-norm)
        if spec.dense:
            self.mlp_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
            self.mlp = DenseMLP(spec)
        else:
            self.moe_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
            self.moe = MoE(spec, layer_idx)
        if spec.residual_scaling:
            self.attn_residual = ResidualScaling(spec.hidden_size)
            self.moe_residual = ResidualScaling(spec.hidden_size)

    def forward(self, ops, x, normed, router_state, cos, sin, predecessors, mask, cache, next_norm, restrict=None):
        """x is the fp32 residual stream and `normed` its attn_norm (computed by the previous block, fused with
        its residual update); sublayers run in the parameter dtype. Returns (x, next_norm(x), router state,
        routing)."""
        attn = ops.attention(self.attn, normed, cos, sin, predecessors, mask, cache)
        x, normed = ops.add_norm(getattr(self, "attn_residual", None), x, attn,
                                 self.mlp_norm if self.dense else self.moe_norm)
        if self.dense:
            out, routing = ops.mlp(self.mlp, normed), None
        else:
            out, router_state, routing = ops.moe(self.moe, normed, router_state, restrict)
        x, normed = ops.add_norm(getattr(self, "moe_residual", None), x, out, next_norm)
        return x, normed, router_state, routing


class Transformer(nn.Module):
    ops = ReferenceOps()  # the generated model swaps in its kernels here
    activation_checkpointing = False  # recompute each layer in backward (training at long context)

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden_size)
        if spec.residual_scaling:
            self.embed_scale = nn.Parameter(torch.ones(spec.hidden_size))
            self.embed_bias = nn.Parameter(torch.zeros(spec.hidden_size))
        self.layers = nn.ModuleList(Block(spec, i) for i in range(spec.num_layers))
        self.final_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.lm_head = None if spec.tie_embeddings else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def forward(self, input_ids, positions=None, predecessors=None, visible=None, return_routings: bool = False,
                cache=None, layout=None, draft_expert_budget: int | None = None):
        """Logits (B, T, V) fp32; with return_routings, a ForwardOutput that also holds each layer's routing.

        Training goes through here (not forward_full) so that DDP / FSDP forward hooks run.
        """
        out = self.forward_full(input_ids, positions, predecessors, visible, cache, layout, draft_expert_budget)
        return out if return_routings else out.logits

    def forward_full(self, input_ids, positions=None, predecessors=None, visible=None, cache=None,
                     layout=None, draft_expert_budget: int | None = None) -> ForwardOutput:
        """input_ids (B, T). positions and predecessors: (T,) or (B, T) long, predecessor -1 for none;
        visible: (T, T) or (B, T, T) bool, row = query. Defaults: a plain causal sequence.
        `layout` (a zdiff.pattern.BatchLayout) is what the kernels of the generated model read
        instead of `visible`; when `visible` is None it is built from the layout.

        With a `DecodeCache` (zdiff.generation.oracle), the rows are new tokens after the cached
        ones: predecessors index [cache state rows | new rows], visible is (B, T, cache slots + T),
        and the pass's K/V and CCA projections are stashed for `cache.commit`.

        `draft_expert_budget` (else the layout's field of that name; None: off): the rows past each sequence's
        causal rows (proposal blocks, the prefill's mask block, training's mask half) choose experts only among
        those the causal rows chose in the same layer, plus that many more by router mass
        (`runtime.moe.draft_restriction`). The causal rows never see those rows, so their outputs are
        unchanged."""
        B, T = input_ids.shape
        device = input_ids.device
        rows = torch.arange(T, device=device)
        positions = (rows if positions is None else positions).expand(B, T)
        predecessors = rows - 1 if predecessors is None else predecessors
        predecessors = self.ops.predecessors(predecessors.expand(B, predecessors.shape[-1]))
        mask = self.ops.attention_mask(layout, visible, B, T, cache, device)
        restrict = self._draft_restriction(layout, draft_expert_budget, T, device)

        h = self.embed(input_ids)
        if self.spec.residual_scaling:
            h = (h + self.embed_bias) * self.embed_scale
        x = h.float()  # the residual stream stays fp32
        attn = self.spec.attention
        cos, sin = rope_cos_sin(positions, attn.rotary_dim, attn.rope_theta, self.dtype, attn.rope_scaling)
        normed = self.ops.norm(x.to(self.dtype), self.layers[0].attn_norm)
        norms_after = [layer.attn_norm for layer in self.layers[1:]] + [self.final_norm]
        router_state, routings = None, []
        for i, (layer, next_norm) in enumerate(zip(self.layers, norms_after)):
            layer_cache = None if cache is None else cache.layers[i]
            x, normed, router_state, routing = self.run_layer(getattr(layer, "sharded_forward", layer), self.ops, x,
                                                              normed, router_state, cos, sin, predecessors, mask,
                                                              layer_cache, next_norm, restrict)
            routings.append(routing)
        head = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return ForwardOutput(hidden=normed, head=head, routings=routings)

    def _draft_restriction(self, layout, budget, rows: int, device):
        budget = getattr(layout, "draft_expert_budget", None) if budget is None else budget
        if budget is None:
            return None
        if layout is None or not isinstance(budget, int) or budget < 0:
            raise ZdiffError(f"draft_expert_budget must be a non-negative int with a layout, got {budget!r}"
                             + ("" if layout is not None else " without a layout"))
        return draft_restriction(layout, rows, device, budget)

    def run_layer(self, fn, *args):
        """fn(*args), its activations recomputed in backward when `activation_checkpointing` is on
        (only while training with gradients: evaluation and decoding run it plainly). Under FSDP2 a
        block runs through `sharded_forward` (zdiff.train.trainer._shard), the registered forward of
        its unit."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)


@torch.no_grad()
def init_weights(model: Transformer, seed: int = 0, std: float = 0.02) -> Transformer:
    """Deterministic random initialisation for training from scratch and for tests.

    Scales and norms start at one, biases at zero, the key temperature at one (transformers
    initialises it at zero, which would make a fresh model's attention uniform), convs with
    PyTorch's default, matrices N(0, std).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if "conv_" in name:
            fan_in = p.shape[1] * p.shape[2] if p.dim() == 3 else model.spec.attention.head_dim
            bound = fan_in ** -0.5
            p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))
        elif p.dim() >= 2:
            p.copy_(torch.empty(p.shape).normal_(0.0, std, generator=gen))
        elif leaf in ("bias", "out_bias", "residual_bias", "embed_bias"):
            p.zero_()
        else:  # norm weights, residual scales, key temperature, router state scale
            p.fill_(1.0)
    return model


def cast_model(model: Transformer, dtype: torch.dtype | None = None, device=None) -> Transformer:
    """Move and cast parameters; balancing biases stay fp32 (they take updates of ~1e-3 around -1)."""
    model = model.to(device=device, dtype=dtype)
    for layer in model.layers:
        if not layer.dense:
            layer.moe.router.balancing_bias = layer.moe.router.balancing_bias.float()
    return model


def build_model(spec: ModelSpec, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Transformer:
    return cast_model(init_weights(Transformer(spec), seed=seed), dtype=dtype, device=device)
