"""The next drafts of a decode step: one Gumbel-max draw per draft row over the vocabulary, keyed in place.

After verification, the proposal block at the largest level a <= n (n accepted drafts) supplies the next
drafts: its rows n - a + 1 .. b - 1 give b - 1 draft rows per slot. Their LM-head output is written once, in
the model dtype, into `SlotState.draft_logits` (the next step's verifier reads q from it: no fp32 copy), and
each row's draft is argmax(z / T + Gumbel noise) over the non-banned ids (argmax z / T for greedy slots),
the noise keyed on (seed, the draft's position, DRAFT) by `keyed_rng`.

Two backends give the same draws: "fused", a split-vocabulary Triton kernel (each program races one
vocabulary split of one row; greedy programs skip the hash and the logs) and a pick kernel combining the
splits (two launches for every slot at once); "torch", the same maths as torch ops. Top-k / top-p: one
more launch filters the rows first (`filter_kernel`, fp32 at unit scale), as `process_logits` would. No
softmax and no cumsum: a Gumbel-max draw needs neither. Which rows supply the drafts is one
more small kernel (`draft_rows_kernel`; `draft_rows` as torch ops on the torch backend).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .batched_sampling import GREEDY, gumbel_race, process_logits
from .filter_kernel import launch_filter
from .keyed_rng import DRAFT, DRAFT_SALT, _gumbel_of, _row_key, gumbel_noise
from .vocab_kernels import (
    BIG_INDEX,
    GREEDY_CODE,
    MAX_SAMPLE_SPLITS,
    NEG_INF,
    _lane_best,
    _reduce_best,
    sm_count,
    vocab_splits,
)


@triton.jit
def draft_rows_kernel(n_ptr, causal_ptr, blocks_ptr, active_ptr, tidar_ptr, levels_ptr, rows_ptr, num_drafts_ptr,
                      S, P, b, R, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr):
    """One program for every slot: `draft_rows` (the rows of the chosen block, stored (S, b - 1) int64) and the
    next step's draft counts, stored into num_drafts."""
    s = tl.arange(0, BLOCK_S)
    live = s < S
    n = tl.load(n_ptr + s, mask=live, other=0)
    blocks = tl.load(blocks_ptr + s, mask=live, other=0)
    j = tl.arange(0, BLOCK_P)
    levels = tl.load(levels_ptr + j, mask=j < P, other=BIG_INDEX)
    usable = (levels[None, :] <= n[:, None]) & (j[None, :] < blocks[:, None])
    chosen = tl.maximum(tl.sum(usable.to(tl.int32), 1) - 1, 0)
    offset = n - tl.sum(tl.where(j[None, :] == chosen[:, None], levels[None, :], 0), 1)
    t = tl.arange(0, BLOCK_T)
    rows = tl.minimum((tl.load(causal_ptr + s, mask=live, other=0) + chosen * b + offset + 1)[:, None] + t[None, :],
                      R - 1)
    tl.store(rows_ptr + s[:, None] * (b - 1) + t[None, :], rows, mask=live[:, None] & (t[None, :] < b - 1))
    drafting = (tl.load(active_ptr + s, mask=live, other=0) != 0) & (tl.load(tidar_ptr + s, mask=live, other=0) != 0)
    tl.store(num_drafts_ptr + s, tl.where(drafting & (blocks > 0), b - 1 - offset, 0), mask=live)


@triton.jit
def draft_sample_kernel(
    logits_ptr, kind_ptr, temperature_ptr, seed_ptr, position_ptr, best_ptr, best_idx_ptr,
    V, D, S2, chunks_per_split, banned_id,
    PROCESSED: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Grid (S2, S * D): the race of row b * D + t (draft t of slot b) over vocabulary split s."""
    s = tl.program_id(0)
    row = tl.program_id(1)
    b = row // D
    t = row - b * D
    greedy = tl.load(kind_ptr + b) == GREEDY_CODE
    if PROCESSED:
        inv_temperature = 1.0
    else:
        inv_temperature = 1.0 / tl.load(temperature_ptr + b)
    base = logits_ptr + row.to(tl.int64) * V
    offs = tl.arange(0, BLOCK_V)
    best = tl.full((BLOCK_V,), NEG_INF, tl.float32)
    best_idx = tl.zeros((BLOCK_V,), tl.int32)
    if greedy:
        for c in range(0, chunks_per_split):
            idx = (s * chunks_per_split + c) * BLOCK_V + offs
            valid = (idx < V) & (idx != banned_id)
            z = tl.load(base + idx, mask=valid, other=0.0).to(tl.float32) * inv_temperature
            best, best_idx = _lane_best(best, best_idx, tl.where(valid, z, NEG_INF), idx)
    else:
        key = _row_key(tl.load(seed_ptr + b), tl.load(position_ptr + b) + t, DRAFT_SALT)
        for c in range(0, chunks_per_split):
            idx = (s * chunks_per_split + c) * BLOCK_V + offs
            valid = (idx < V) & (idx != banned_id)
            z = tl.load(base + idx, mask=valid, other=0.0).to(tl.float32) * inv_temperature
            race = tl.where(valid & (z > NEG_INF), z + _gumbel_of(key, idx), NEG_INF)
            best, best_idx = _lane_best(best, best_idx, race, idx)
    top, top_idx = _reduce_best(best, best_idx)
    tl.store(best_ptr + row * S2 + s, top)
    tl.store(best_idx_ptr + row * S2 + s, top_idx)


@triton.jit
def draft_pick_kernel(best_ptr, best_idx_ptr, drafts_ptr, S2, SPLITS: tl.constexpr):
    """Grid (S * D,): the winner over the splits (ties: the smallest id), stored as the row's int64 draft."""
    row = tl.program_id(0)
    splits = tl.arange(0, SPLITS)
    in_range = splits < S2
    _, token = _reduce_best(tl.load(best_ptr + row * S2 + splits, mask=in_range, other=NEG_INF),
                            tl.load(best_idx_ptr + row * S2 + splits, mask=in_range, other=BIG_INDEX))
    tl.store(drafts_ptr + row, token.to(tl.int64))


def launch_draft_sampling(logits: torch.Tensor, kind: torch.Tensor, temperature: torch.Tensor, seed: torch.Tensor,
                          first_position: torch.Tensor, banned_id: int, processed: bool, out: torch.Tensor,
                          block_v: int = 1024, splits: int | None = None, num_warps: int = 4) -> torch.Tensor:
    """The two kernels: drafts of logits (S, D, V) (model dtype, contiguous) into out (S, D) int64."""
    S, D, V = logits.shape
    if S * D == 0:
        return out
    block_v = min(block_v, triton.next_power_of_2(V))
    if splits is None:
        S2, per = vocab_splits(V, S * D, sm_count(logits.device), block_v, MAX_SAMPLE_SPLITS, min_chunks=2)
    else:
        S2, per = splits, triton.cdiv(triton.cdiv(V, block_v), splits)
    best = torch.empty((S * D, S2), dtype=torch.float32, device=logits.device)
    best_idx = torch.empty((S * D, S2), dtype=torch.int32, device=logits.device)
    draft_sample_kernel[(S2, S * D)](logits, kind, temperature, seed, first_position, best, best_idx, V, D, S2, per,
                                     banned_id, PROCESSED=processed, BLOCK_V=block_v, num_warps=num_warps)
    draft_pick_kernel[(S * D,)](best, best_idx, out, S2, SPLITS=triton.next_power_of_2(S2), num_warps=1)
    return out


def sample_drafts(backend: str, logits: torch.Tensor, kind: torch.Tensor, temperature: torch.Tensor,
                  top_k: torch.Tensor, top_p: torch.Tensor, seed: torch.Tensor, first_position: torch.Tensor,
                  banned: torch.Tensor | None, banned_id: int, filtered: bool, out: torch.Tensor,
                  **launch) -> torch.Tensor:
    """Draft t of slot s (position first_position[s] + t) from raw logits (S, D, V), written into out (S, D)
    int64. backend "fused" (the kernels) or "torch"; the same draws either way."""
    S, D, V = logits.shape
    if backend == "fused":
        if filtered:  # one more launch: the rows tempered, banned and filtered (fp32, unit scale)
            logits = launch_filter(logits, kind, temperature, top_k, top_p, banned_id)
        return launch_draft_sampling(logits, kind, temperature, seed, first_position, banned_id, filtered, out,
                                     **launch)
    z = process_logits(logits, temperature, top_k, top_p, banned, filtered)
    positions = first_position[:, None] + torch.arange(D, device=logits.device)[None, :]
    drawn = gumbel_race(z, gumbel_noise(seed[:, None], positions, DRAFT, V))
    return out.copy_(torch.where((kind == GREEDY)[:, None], z.argmax(-1), drawn))


def draft_rows(n: torch.Tensor, causal: torch.Tensor, blocks: torch.Tensor, active: torch.Tensor,
               tidar: torch.Tensor, levels: torch.Tensor, block_size: int, step_rows: int):
    """(rows (S, b - 1): the step rows of the next drafts, num_drafts (S,)) as torch ops: the block at the
    largest level a <= n among the slot's `blocks` proposed ones supplies its rows n - a + 1 .. b - 1."""
    b = block_size
    proposed = torch.arange(levels.shape[0], device=n.device)[None, :] < blocks[:, None]
    chosen = (((levels[None, :] <= n[:, None]) & proposed).sum(-1) - 1).clamp_min(0)
    offset = n - levels[chosen]
    rows = (causal + chosen * b + offset + 1)[:, None] + torch.arange(b - 1, device=n.device)[None, :]
    return rows.clamp_max(step_rows - 1), torch.where(active & tidar & (blocks > 0), b - 1 - offset, 0)


def sample_next_drafts(backend: str, st, hidden: torch.Tensor, head: torch.Tensor, n: torch.Tensor,
                       causal: torch.Tensor, blocks: torch.Tensor, active: torch.Tensor, first_position: torch.Tensor,
                       shape, k) -> None:
    """Next drafts of a step, in place in st (drafts, draft_logits, num_drafts): from the block at the largest
    level a <= n, whose rows n - a + 1 .. b - 1 supply drafts at first_position + 0 .. b - 2.

    hidden (S, R, H) final hidden states, head (V, H) the LM head; n (S,) accepted drafts; causal (S,) verify
    rows and blocks (S,) proposal blocks of each slot this step; active (S,) the slots that took part."""
    if not shape.proposals:
        st.num_drafts.zero_()
        return
    b, S, levels = k.block_size, n.shape[0], k.levels[: shape.proposals]
    if backend == "fused":  # one launch instead of ~20 small torch ops
        rows = torch.empty((S, b - 1), dtype=torch.int64, device=n.device)
        draft_rows_kernel[(1,)](n, causal, blocks, active, st.tidar, levels, rows, st.num_drafts, S,
                                shape.proposals, b, shape.rows, BLOCK_S=triton.next_power_of_2(S),
                                BLOCK_P=triton.next_power_of_2(shape.proposals),
                                BLOCK_T=triton.next_power_of_2(b - 1), num_warps=1)
    else:
        rows, num_drafts = draft_rows(n, causal, blocks, active, st.tidar, levels, b, shape.rows)
        st.num_drafts.copy_(num_drafts)
    # the head output of the chosen rows, in the model dtype, straight into the slot state (no copy)
    torch.matmul(hidden.gather(1, rows[..., None].expand(-1, -1, hidden.shape[-1])), head.t(), out=st.draft_logits)
    sample_drafts(backend, st.draft_logits, st.kind, st.temperature, st.top_k, st.top_p, st.seed, first_position,
                  k.banned, k.banned_id, shape.filtered, st.drafts)


def aot_kernels(logits: str = "bf16", block_v: int = 1024, splits: int = MAX_SAMPLE_SPLITS,
                processed: bool = False) -> list[tuple]:
    """(name, kernel, signature, constexprs, num_warps) of the draft sampler's two kernels, for AOT compilation."""
    sample = {"logits_ptr": f"*{logits}", "kind_ptr": "*i64", "temperature_ptr": "*fp32", "seed_ptr": "*i64",
              "position_ptr": "*i64", "best_ptr": "*fp32", "best_idx_ptr": "*i32", "V": "i32", "D": "i32",
              "S2": "i32", "chunks_per_split": "i32", "banned_id": "i32", "PROCESSED": "constexpr",
              "BLOCK_V": "constexpr"}
    pick = {"best_ptr": "*fp32", "best_idx_ptr": "*i32", "drafts_ptr": "*i64", "S2": "i32", "SPLITS": "constexpr"}
    rows = {"n_ptr": "*i64", "causal_ptr": "*i64", "blocks_ptr": "*i64", "active_ptr": "*i1", "tidar_ptr": "*i1",
            "levels_ptr": "*i64", "rows_ptr": "*i64", "num_drafts_ptr": "*i64", "S": "i32", "P": "i32", "b": "i32",
            "R": "i32", "BLOCK_S": "constexpr", "BLOCK_P": "constexpr", "BLOCK_T": "constexpr"}
    return [("draft_sample", draft_sample_kernel, sample, {"PROCESSED": processed, "BLOCK_V": block_v}, 4),
            ("draft_pick", draft_pick_kernel, pick, {"SPLITS": splits}, 1),
            ("draft_rows", draft_rows_kernel, rows, {"BLOCK_S": 64, "BLOCK_P": 8, "BLOCK_T": 16}, 1)]
