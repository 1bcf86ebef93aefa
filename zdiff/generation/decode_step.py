"""One decode step over a prefix of slots, as device work only (DESIGN.md, "The decode engine").

Fixed shapes: S slots, R = V_ROWS + P * b rows per slot, where V_ROWS is 1 + d when any slot may
hold drafts (d: the step's verify length, at most b - 1; else 1) and P the proposal blocks of this step.
Per slot, on the device:
  1. layout: verify rows [c, d_1..d_m] (m = min(num_drafts, V_ROWS - 1): a step verifying d < b - 1
     drafts drops the rest), then P_s blocks at the first levels <= m (0 for AR slots), then padding;
     positions and predecessors from cache_len (one kernel: step_kernels.layout; the torch version,
     step_torch, on the CPU);
  2. forward through the model (a StepLayout: no host tuple, no mask for the generated model; with the
     shape's expert budget the proposal rows route among the verify rows' experts) to the
     final hidden states; the LM head runs on the verify rows and, after 3, the chosen block only;
  3. verify all slots at once with their own parameters (`verify.verify_slots`: the fused Triton
     verifier or the same maths as torch ops, draw for draw), on the logits in the model dtype;
  4. the committed tokens, stop / length checks, the output packet (tokens, count, done, n, was active;
     the host reads it one step late) and the state update (one kernel: step_kernels.settle); the commit
     of c, d_1..d_n into every layer's cache (one kernel: commit_kernel), the lengths advanced;
  5. next drafts from the block at the largest level <= n (`draft_sampling.sample_next_drafts`).
Nothing here reads a value back to the host: `tests/test_engine.py` runs it under a guard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .draft_sampling import sample_next_drafts
from .slot_state import SlotState
from .slots import SlotCache, StepLayout
from .step_kernels import layout, settle
from .step_torch import LAST_CACHED, NO_PREDECESSOR, extended_predecessors
from .verify import verify_slots


@dataclass(frozen=True)
class StepShape:
    slots: int  # bucket: slots [0, slots) take part
    verify_rows: int  # 1 (no slot holds drafts) or 1 + d: c and at most d drafts (the rest dropped)
    proposals: int  # P blocks at levels[:P]
    filtered: bool  # some slot uses top-k or top-p (the sort runs)
    block_size: int
    budget: int | None = None  # the draft rows' expert budget (StepLayout.draft_expert_budget); None: off

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
    kernels: bool = False  # layout and bookkeeping as Triton kernels (step_kernels); else as torch ops (step_torch)


def causal_chunk_inputs(tokens: torch.Tensor, start: torch.Tensor, rows: torch.Tensor, receptive_field: int):
    """ids, positions, predecessors of causal chunks (S, R), rows[s] of them real, after start[s] cached
    tokens (prefill)."""
    R = tokens.shape[1]
    r = torch.arange(R, device=tokens.device)[None, :].expand(tokens.shape[0], R)
    new_pred = torch.where(r == 0, LAST_CACHED, r - 1)
    new_pred = torch.where(r < rows[:, None], new_pred, NO_PREDECESSOR)
    return tokens, start[:, None] + r, extended_predecessors(new_pred, start, receptive_field)


def _layout_rows(st: SlotState, shape: StepShape, k: StepConstants, receptive_field: int):
    """(ids, positions, predecessors, layout, causal, blocks per slot, drafts verified per slot, position of d_1)
    of this step: one kernel (step_kernels)."""
    ids, positions, preds, lengths, causal, n_rows, blocks, verify_drafts, first_position = layout(
        k.kernels, st, shape.rows, shape.verify_rows, k.levels[: shape.proposals], k.block_size, k.fill_id,
        receptive_field)
    step_layout = StepLayout(k.block_size, k.level_values[: shape.proposals], lengths, causal, n_rows,
                             draft_expert_budget=shape.budget if shape.proposals else None)
    return ids, positions, preds, step_layout, causal, blocks, verify_drafts, first_position


def _logits(hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """Logits of the given rows only, in the model dtype (the verifier reads them as they are): the verify rows;
    the chosen block's b - 1 draft rows are `sample_next_drafts`'s, 2b - 1 of the b + P * b rows of a step.
    hidden (S, rows, H) may be a strided view: a batched matmul reads it in place (a 2-D matmul would copy it)."""
    return torch.bmm(hidden, head.t().expand(hidden.shape[0], -1, -1))


def decode_step(model, st: SlotState, cache: SlotCache, shape: StepShape, k: StepConstants) -> None:
    """Run one step on slots [0, shape.slots) of `st` (a prefix view) and `cache` (the same prefix)."""
    V_ROWS = shape.verify_rows
    ids, positions, preds, step_layout, causal, blocks, num_drafts, first_position = _layout_rows(
        st, shape, k, cache.receptive_field)
    out = model(ids, positions=positions, predecessors=preds, cache=cache, layout=step_layout, return_routings=True)
    hidden, head = out.hidden, out.head  # (S, R, H): the LM head runs only on the rows a step reads

    sampler = (st.kind, st.temperature, st.top_k, st.top_p, st.mix_weight, st.seed)
    ar_logits = _logits(hidden[:, :V_ROWS], head)
    n, token = verify_slots(k.verifier, ar_logits, st.draft_logits, st.drafts, num_drafts, first_position,
                            *sampler, k.banned_id, shape.filtered, banned=k.banned)
    # packet, pending, generated, active and cache_len in one kernel; `active` is the step's mask (the next drafts
    # read it), the commit writes at the lengths before the step
    n, counts, active, old_len, next_position = settle(k.kernels, st, n, token)
    cache.commit(old_len, counts, V_ROWS)

    # next drafts: block at the largest level a <= n supplies slots n - a + 1 .. b - 1
    sample_next_drafts(k.verifier, st, hidden, head, n, causal, blocks, active, next_position, shape, k)
