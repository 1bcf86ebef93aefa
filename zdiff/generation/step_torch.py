"""The step's layout and bookkeeping as torch ops: the CPU path and the oracle of `step_kernels`.

`layout_rows` places each slot's rows (verify rows, proposal blocks at levels <= its drafts, padding)
and their positions and predecessors; `settle` turns the verifier's (n, token) into the tokens the
step commits, the stop / length checks, the output packet and the state update. `step_kernels` does
the same in one Triton kernel each, bit for bit (tests/test_step_kernels.py).
"""

from __future__ import annotations

import torch

from .rules import delivered_tokens, state_predecessors
from .slot_state import ACCEPTED, COUNT, DONE, WAS_ACTIVE, SlotState

# new-row predecessor codes, before mapping into [cache state rows | new rows]
LAST_CACHED, NO_PREDECESSOR = -1, -2


def extended_predecessors(new_pred: torch.Tensor, cache_len: torch.Tensor, receptive_field: int) -> torch.Tensor:
    """(S, rf + R) indices into [cache state rows | new rows] from new-row codes (S, R): a row index,
    LAST_CACHED (the last committed token) or NO_PREDECESSOR. State row j is the (rf - j)-th last
    committed token; its predecessor is row j - 1 while that token exists."""
    rf = receptive_field
    state = state_predecessors(cache_len, rf)
    last = torch.where(cache_len[:, None] >= 1, rf - 1, -1) if rf else torch.full_like(new_pred, -1)
    new = torch.where(new_pred >= 0, rf + new_pred, torch.where(new_pred == LAST_CACHED, last, -1))
    return torch.cat([state.expand(new_pred.shape[0], rf), new], dim=1)


def layout_rows(st: SlotState, rows: int, verify_rows: int, levels: torch.Tensor, block_size: int, fill_id: int,
                receptive_field: int):
    """(ids, positions, extended predecessors, cache lengths, causal rows, rows per slot, blocks per slot, drafts
    verified per slot, position of d_1 per slot) of a step with `rows` rows per slot and blocks at `levels` (the
    first P acceptance levels)."""
    S, R, b, P = st.active.shape[0], rows, block_size, levels.shape[0]
    # a step verifying d = verify_rows - 1 drafts drops the rest (lossless: the verifier stops at d)
    m = torch.where(st.active, st.num_drafts.clamp_max(verify_rows - 1), 0)
    blocks = (levels[None, :] <= m[:, None]).sum(-1) if P else torch.zeros_like(m)
    blocks = torch.where(st.tidar & st.active, blocks, 0)
    causal = torch.where(st.active, 1 + m, 0)
    n_rows = causal + blocks * b
    r = torch.arange(R, device=m.device)[None, :].expand(S, R)
    in_block = (r >= causal[:, None]) & (r < n_rows[:, None])
    j = ((r - causal[:, None]).clamp_min(0) // b).clamp_max(max(P - 1, 0))
    t = (r - causal[:, None]).clamp_min(0) % b
    level = levels[j] if P else torch.zeros_like(j)
    if st.drafts.shape[1]:
        draft_ids = st.drafts.gather(1, (r - 1).clamp(0, st.drafts.shape[1] - 1))
    else:
        draft_ids = torch.full_like(r, fill_id)
    ids = torch.where(r == 0, st.pending[:, None], torch.where(r < causal[:, None], draft_ids, fill_id))
    cl = st.cache_len[:, None]
    positions = torch.where(in_block, cl + 1 + level + t, cl + r.clamp_max(verify_rows - 1))
    new_pred = torch.where(r == 0, LAST_CACHED, r - 1)
    new_pred = torch.where(in_block & (t == 0), level, new_pred)
    new_pred = torch.where(r < n_rows[:, None], new_pred, NO_PREDECESSOR)
    preds = extended_predecessors(new_pred, st.cache_len, receptive_field)
    cache_lengths = torch.where(st.active, st.cache_len, 0).int()
    return ids, positions, preds, cache_lengths, causal.int(), n_rows.int(), blocks, m, st.cache_len + 1


def settle(st: SlotState, n: torch.Tensor, token: torch.Tensor):
    """Write the packet (tokens, count, done, n, was active), `generated`, `pending`, `active` and `cache_len` of
    slots that took part, from the verifier's accepted counts n and tokens; returns (n, rows to commit, the step's
    active mask, the lengths before the step, the next drafts' first position), n and the counts 0 for idle
    slots. The commit writes at the old lengths, the next drafts read the old `active`."""
    b = st.packet.shape[1] - 4
    active = st.active.clone()
    n = torch.where(active, n, 0)
    counts = torch.where(active, n + 1, 0)
    # the tokens this step commits: d_1..d_n, then the verifier's token
    i = torch.arange(b, device=n.device)[None, :]
    tokens = torch.where(i < n[:, None], torch.cat([st.drafts, token[:, None]], dim=1), token[:, None])
    delivered, done = delivered_tokens(tokens, counts, st.stop_ids, st.generated, st.max_new)
    delivered = torch.where(active, delivered, 0)
    done = active & done
    packet = st.packet
    packet[:, :b].copy_(torch.where(i < delivered[:, None], tokens, -1))
    assert (COUNT, DONE, ACCEPTED, WAS_ACTIVE) == (0, 1, 2, 3)
    packet[:, b:].copy_(torch.stack([delivered, done.long(), n, active.long()], dim=1))
    st.pending.copy_(torch.where(active, token, st.pending))
    st.generated.add_(delivered)
    st.active.copy_(active & ~done)
    old_len = st.cache_len.clone()
    st.cache_len.add_(counts)
    return n, counts, active, old_len, st.cache_len + 1
