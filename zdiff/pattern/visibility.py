"""The TiDAR visibility rule, written once (like FlexAttention's mask_mod).

A batched pass is described per sequence by a few numbers (`BatchLayout`): the keys already
in the KV cache (cache_length), the leading causal rows (clean half / prompt / verify rows),
the valid rows, and, for every block of mask rows after the causal ones, its *anchor*: the
new keys [0, anchor) it sees besides itself. Keys are [cache slots | this pass's rows].

- `sees_new_key(t, u, ...)`: does row t see new key u? Element-wise on torch tensors (any
  broadcastable shapes); its source is also rendered, name for name, into the attention
  kernels as the Triton function `_visible` (`triton_visible_source`), so the kernels, the
  reference model's dense mask and the patterns all evaluate this one function.
- `anchor(kind, j, n_causal, block_size, levels)`: the anchor of block j (training: j * b, the
  clean tokens before the block; prefill: the whole prompt; decode: verify rows 0..LEVELS[j]);
  `triton_anchor_source` renders the same rule for a kernel instance.
- `dense_visible(...)`: the (B, T, cache_slots + T) bool mask from (B,) device tensors, with no
  host synchronisation (no .item(), .tolist(), nonzero or loops over the batch). Every valid
  row sees the cache keys < cache_length; padding rows (>= rows) see only themselves, because
  the reference model needs every row to see something.
"""

from __future__ import annotations

import inspect
import textwrap

import torch

KINDS = ("training", "prefill", "decode")

# the element-wise operations of the rule, named as in triton.language (rendered with a `tl.` prefix)
maximum, minimum, where = torch.maximum, torch.minimum, torch.where


def sees_new_key(t, u, n_causal, n_rows, anchor_j, BLOCK):
    """Row t sees new key u: causal rows see keys <= t; row t of mask block j sees keys < anchor(j) and
    its own block; nothing involves padding (rows or keys >= n_rows)."""
    j = maximum(t - n_causal, 0 * t) // BLOCK
    start = n_causal + j * BLOCK
    own_block = (u >= start) & (u < minimum(start + BLOCK, n_rows))
    block_rule = (u < anchor_j(j, n_causal, BLOCK)) | own_block
    return where(t < n_causal, u <= t, block_rule) & (u < n_rows) & (t < n_rows)


def anchor(kind: str, j: torch.Tensor, n_causal: torch.Tensor, block_size: int, levels: tuple[int, ...]):
    """Block j sees the new keys [0, anchor) besides itself; non-decreasing in j. Decode blocks past the
    last level use the last level (they are padding then)."""
    if kind == "training":
        return j * block_size
    if kind == "prefill":
        return n_causal + 0 * j
    assert kind == "decode", kind
    if not levels:
        return 0 * j
    ends = torch.tensor(levels, dtype=torch.long, device=j.device) + 1
    return ends[j.long().clamp(0, len(levels) - 1)]


def triton_anchor_source(kind: str, levels: tuple[int, ...]) -> str:
    """The body expression of the kernel's `_anchor(j, n_causal, BLOCK)` for a layout (decode: a tl.where
    chain over the compiled acceptance levels, the last one the fallback)."""
    if kind == "training":
        return "j * BLOCK + 0 * n_causal"
    if kind == "prefill":
        return "n_causal + 0 * j"
    if not levels:
        return "0 * j + 0 * n_causal"
    expr = str(levels[-1] + 1)
    for j in range(len(levels) - 2, -1, -1):
        expr = f"tl.where(j == {j}, {levels[j] + 1}, {expr})"
    return expr + " + 0 * j + 0 * n_causal"


def triton_visible_source() -> str:
    """`sees_new_key` as the Triton function `_visible(t, u, n_causal, n_rows, BLOCK)` of the kernels."""
    source = textwrap.dedent(inspect.getsource(sees_new_key))
    body = source[source.index('"""', source.index('"""') + 3) + 3:].strip("\n")
    for name in ("maximum", "minimum", "where"):
        body = body.replace(f" {name}(", f" tl.{name}(").replace(f"({name}(", f"(tl.{name}(")
    body = body.replace("anchor_j(j, n_causal, BLOCK)", "_anchor(j, n_causal, BLOCK)")
    return ("@triton.jit\ndef _visible(t, u, n_causal, n_rows, BLOCK: tl.constexpr):\n"
            '    """Does row t see new key u? zdiff.pattern.visibility.sees_new_key, rendered."""\n' + body + "\n")


def dense_visible(kind: str, block_size: int, levels: tuple[int, ...], cache_lengths: torch.Tensor,
                  causal_rows: torch.Tensor, rows: torch.Tensor, padded_rows: int, cache_slots: int = 0):
    """(B, padded_rows, cache_slots + padded_rows) bool on the tensors' device; keys [cache slots | rows]."""
    device = rows.device
    T, S = padded_rows, cache_slots
    n_cache, n_causal, n_rows = (x.to(torch.long).view(-1, 1, 1) for x in (cache_lengths, causal_rows, rows))
    t = torch.arange(T, device=device).view(1, T, 1)
    u = torch.arange(T, device=device).view(1, 1, T)
    slot = torch.arange(S, device=device).view(1, 1, S)

    def anchor_j(j, n_causal, BLOCK):
        return anchor(kind, j, n_causal, BLOCK, tuple(levels))

    new = sees_new_key(t, u, n_causal, n_rows, anchor_j, block_size) | ((t >= n_rows) & (t == u))
    cached = (slot < n_cache) & (t < n_rows)
    return torch.cat([cached, new], dim=-1)
