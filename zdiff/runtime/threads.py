"""A fixed intra-op thread count: the CPU's floating-point results depend on it.

torch splits reductions (sums, the K dimension of MKL's small-output matmuls such as a weight
gradient h.T @ g) into one partial sum per thread, so the same run with 1 and with 2 threads
differs in the last bits after one step, and 360 steps turn that into a different model
(NOTES.md, "Reproducibility"). The count comes from OMP_NUM_THREADS when set, else the core
count; pinning it per run (a setting recorded in run.json) makes a run independent of the
caller's environment. Load, timing and the order in which processes run do not matter:
measured bit-identical under load 1 and 9 at the same count.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import ZdiffError

MAX_THREADS = 1024


def check_threads(threads: int | None, flag: str = "--threads") -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 1 <= threads <= MAX_THREADS):
        raise ZdiffError(f"{flag} must be an integer in [1, {MAX_THREADS}], got {threads!r}")


@contextlib.contextmanager
def fixed_threads(threads: int | None):
    """Run the block with torch's intra-op thread count set to `threads` (None: leave it); yields the count
    in force, and restores the caller's count afterwards (a library call must not change its process)."""
    check_threads(threads)
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
