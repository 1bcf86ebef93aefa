"""Decoding rules that the engine and the reference loop share, each written once as a pure torch function.

The reference loop (`loop.py`, `cache.py`) is the independent oracle of the *acceptance rule* only; these
rules are bookkeeping both sides must agree on, so both call the same code (the engine's Triton kernels are
checked against these functions bit for bit: `tests/test_step_kernels.py`, `tests/test_commit_kernel.py`).

- `state_predecessors`: the CCA state rows' predecessor chain in the extended row space.
- `rolled_state`: the CCA state after a commit (the last rf rows of [old state | accepted rows]).
- `delivered_tokens`: how many of a step's new tokens are delivered (up to and including the first stop
  token, within the request's token budget) and whether the request is done.
"""

from __future__ import annotations

import torch


def state_predecessors(cache_len: torch.Tensor, receptive_field: int) -> torch.Tensor:
    """(S, rf) predecessor of each CCA state row in [state rows | new rows] (-1: the chain ends). State row j
    holds the (rf - j)-th last committed token; its predecessor is row j - 1 while that token exists."""
    j = torch.arange(receptive_field, device=cache_len.device)[None, :]
    return torch.where((j > 0) & (cache_len[:, None] - receptive_field + j - 1 >= 0), j - 1, -1)


def rolled_state(state: torch.Tensor, new_rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(S, rf, C) state after appending the first counts[s] of new_rows (S, R, C) to each slot's state (S, rf, C):
    the last rf rows of [state | accepted rows]."""
    rf = state.shape[1]
    keep = (counts[:, None] + torch.arange(rf, device=counts.device))[..., None]
    joined = torch.cat([state, new_rows.to(state.dtype)], dim=1)
    return joined.gather(1, keep.expand(-1, -1, state.shape[-1]))


def delivered_tokens(tokens: torch.Tensor, counts: torch.Tensor, stop_ids: torch.Tensor, generated: torch.Tensor,
                     max_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(delivered (S,), done (S,)) of a step that produced tokens[s, :counts[s]] (S, T): the tokens up to and
    including the first one in stop_ids[s] (S, K; pad with -1), at most max_new[s] - generated[s] of them; done
    when a stop token was delivered or the budget is spent."""
    i = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    hit = (tokens[..., None] == stop_ids[:, None, :]).any(-1) & (i < counts[:, None])
    first_stop = torch.where(hit.any(-1), hit.int().argmax(-1), tokens.shape[1])
    delivered = torch.minimum(torch.minimum(counts, first_stop + 1), max_new - generated).clamp_min(0)
    return delivered, (first_stop < counts) | (generated + delivered >= max_new)
