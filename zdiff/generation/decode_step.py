"""One decode step over a prefix of slots, as device work only (DESIGN.md, "The decode engine").

Fixed shapes: S slots, R = V_ROWS + P * b rows per slot, where V_ROWS is b when any slot may
hold drafts (else 1) and P the proposal blocks of this step. Per slot, on the device:
  1. layout: verify rows [c, d_1..d_m] (m = num_drafts), then P_s blocks at the first levels
     <= m (0 for AR slots), then padding; positions and predecessors from cache_len;
  2. forward through the model (a StepLayout: no host tuple, no mask for the generated model) to the
     final hidden states; the LM head runs on the verify rows and, after 3, the chosen block only;
  3. verify all slots at once with their own parameters (`verify.verify_slots`: the fused Triton
     verifier or the same maths as torch ops, draw for draw), on the logits in the model dtype;
  4. commit c, d_1..d_n into the cache (fixed-shape scatter), stop / length checks;
  5. next drafts from the block at the largest level <= n (`draft_sampling.sample_next_drafts`);
  6. the output packet (tokens, count, done, n, was active) for the host to read one step late.
Nothing here reads a value back to the host: `tests/test_engine.py` runs it under a guard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .draft_sampling import sample_next_drafts
from .slot_state import ACCEPTED, COUNT, DONE, WAS_ACTIVE, SlotState
from .slots import SlotCache, StepLayout
from .verify import verify_slots

# new-row predecessor codes, before mapping into [cache state rows | new rows]
LAST_CACHED, NO_PREDECESSOR = -1, -2


@dataclass(frozen=True)
class StepShape:
    slots: int  # bucket: slots [0, slots) take part
    verify_rows: int  # 1 (no slot holds drafts) or block_size
    proposals: int  # P blocks at levels[:P]
    filtered: bool  # some slot uses top-k or top-p (the sort runs)
    block_size: int

    @property
    def rows(self) -> int:
        return self.verify_rows + self.proposals * self.block_size


@dataclass(frozen=True)
class StepConstants:
    """Device constants of an engine, made once (the step never creates tensors from host lists)."""

    block_size: int
    level_values: tuple[int, ...]  # the spec's acceptance levels (host copy of `levels`)
    levels: torch.Tensor  # (len(levels),) int64
    banned: torch.Tensor  # ids never sampled (the mask token)
    fill_id: int  # the id of mask and padding rows
    banned_id: int = -1  # host copy of the one banned id (-1: none), for the fused verifier
    verifier: str = "torch"  # verifier and draft sampler backend: "fused" (Triton kernels) or "torch" (same draws)


def extended_predecessors(new_pred: torch.Tensor, cache_len: torch.Tensor, receptive_field: int) -> torch.Tensor:
    """(S, rf + R) indices into [cache state rows | new rows] from new-row codes (S, R): a row index,
    LAST_CACHED (the last committed token) or NO_PREDECESSOR. State row j is the (rf - j)-th last
    committed token; its predecessor is row j - 1 while that token exists."""
    rf = receptive_field
    j = torch.arange(rf, device=new_pred.device)[None, :]
    state = torch.where((j > 0) & (cache_len[:, None] - rf + j - 1 >= 0), j - 1, -1)
    last = torch.where(cache_len[:, None] >= 1, rf - 1, -1) if rf else torch.full_like(new_pred, -1)
    new = torch.where(new_pred >= 0, rf + new_pred, torch.where(new_pred == LAST_CACHED, last, -1))
    return torch.cat([state.expand(new_pred.shape[0], rf), new], dim=1)


def causal_chunk_inputs(tokens: torch.Tensor, start: torch.Tensor, rows: torch.Tensor, receptive_field: int):
    """ids, positions, predecessors of causal chunks (S, R), rows[s] of them real, after start[s] cached
    tokens (prefill)."""
    R = tokens.shape[1]
    r = torch.arange(R, device=tokens.device)[None, :].expand(tokens.shape[0], R)
    new_pred = torch.where(r == 0, LAST_CACHED, r - 1)
    new_pred = torch.where(r < rows[:, None], new_pred, NO_PREDECESSOR)
    return tokens, start[:, None] + r, extended_predecessors(new_pred, start, receptive_field)


def _layout_rows(st: SlotState, shape: StepShape, k: StepConstants):
    """(ids, positions, predecessors, layout, causal, blocks per slot) of this step."""
    S, R, b = shape.slots, shape.rows, k.block_size
    levels = k.levels[: shape.proposals]
    m = torch.where(st.active, st.num_drafts, 0) if shape.verify_rows > 1 else torch.zeros_like(st.num_drafts)
    blocks = (levels[None, :] <= m[:, None]).sum(-1) if shape.proposals else torch.zeros_like(m)
    blocks = torch.where(st.tidar & st.active, blocks, 0)
    causal = torch.where(st.active, 1 + m, 0)
    n_rows = causal + blocks * b
    r = torch.arange(R, device=m.device)[None, :].expand(S, R)
    in_block = (r >= causal[:, None]) & (r < n_rows[:, None])
    j = ((r - causal[:, None]).clamp_min(0) // b).clamp_max(max(shape.proposals - 1, 0))
    t = (r - causal[:, None]).clamp_min(0) % b
    level = levels[j] if shape.proposals else torch.zeros_like(j)
    if st.drafts.shape[1]:
        draft_ids = st.drafts.gather(1, (r - 1).clamp(0, st.drafts.shape[1] - 1))
    else:
        draft_ids = torch.full_like(r, k.fill_id)
    ids = torch.where(r == 0, st.pending[:, None], torch.where(r < causal[:, None], draft_ids, k.fill_id))
    cl = st.cache_len[:, None]
    positions = torch.where(in_block, cl + 1 + level + t, cl + r.clamp_max(shape.verify_rows - 1))
    new_pred = torch.where(r == 0, LAST_CACHED, r - 1)
    new_pred = torch.where(in_block & (t == 0), level, new_pred)
    new_pred = torch.where(r < n_rows[:, None], new_pred, NO_PREDECESSOR)
    layout = StepLayout(b, k.level_values[: shape.proposals],
                        torch.where(st.active, st.cache_len, 0).int(), causal.int(), n_rows.int())
    return ids, positions, new_pred, layout, causal, blocks


def _logits(hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """Logits of the given rows only, in the model dtype (the verifier reads them as they are): the verify rows;
    the chosen block's b - 1 draft rows are `sample_next_drafts`'s, 2b - 1 of the b + P * b rows of a step."""
    return hidden @ head.t()


def decode_step(model, st: SlotState, cache: SlotCache, shape: StepShape, k: StepConstants) -> None:
    """Run one step on slots [0, shape.slots) of `st` (a prefix view) and `cache` (the same prefix)."""
    b, V_ROWS = k.block_size, shape.verify_rows
    ids, positions, new_pred, layout, causal, blocks = _layout_rows(st, shape, k)
    preds = extended_predecessors(new_pred, st.cache_len, cache.receptive_field)
    out = model(ids, positions=positions, predecessors=preds, cache=cache, layout=layout, return_routings=True)
    hidden, head = out.hidden, out.head  # (S, R, H): the LM head runs only on the rows a step reads

    D = V_ROWS - 1
    num_drafts = torch.where(st.active, st.num_drafts, 0) if D else torch.zeros_like(st.num_drafts)
    sampler = (st.kind, st.temperature, st.top_k, st.top_p, st.mix_weight, st.seed)
    ar_logits = _logits(hidden[:, :V_ROWS], head)
    n, token = verify_slots(k.verifier, ar_logits, st.draft_logits, st.drafts, num_drafts, st.cache_len + 1,
                            *sampler, k.banned_id, shape.filtered, banned=k.banned)
    active = st.active
    n = torch.where(active, n, 0)
    counts = torch.where(active, n + 1, 0)
    cache.commit(st.cache_len, counts, V_ROWS)

    # the tokens this step commits: d_1..d_n, then the verifier's token
    i = torch.arange(b, device=n.device)[None, :]
    tokens = torch.where(i < n[:, None], torch.cat([st.drafts, token[:, None]], dim=1), token[:, None])
    hit = ((tokens[..., None] == st.stop_ids[:, None, :]).any(-1)) & (i < counts[:, None])
    first_stop = torch.where(hit.any(-1), hit.int().argmax(-1), b)
    delivered = torch.minimum(torch.minimum(counts, first_stop + 1), st.max_new - st.generated).clamp_min(0)
    delivered = torch.where(active, delivered, 0)
    done = active & ((first_stop < counts) | (st.generated + delivered >= st.max_new))

    packet = st.packet
    packet[:, :b].copy_(torch.where(i < delivered[:, None], tokens, -1))
    assert (COUNT, DONE, ACCEPTED, WAS_ACTIVE) == (0, 1, 2, 3)
    packet[:, b:].copy_(torch.stack([delivered, done.long(), n, active.long()], dim=1))

    # next drafts: block at the largest level a <= n supplies slots n - a + 1 .. b - 1
    new_len = st.cache_len + counts
    sample_next_drafts(k.verifier, st, hidden, head, n, causal, blocks, active, new_len + 1, shape, k)

    st.pending.copy_(torch.where(active, token, st.pending))
    st.cache_len.copy_(new_len)
    st.generated.add_(delivered)
    st.active.copy_(active & ~done)
