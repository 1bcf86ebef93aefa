"""The engine's step shapes and their CUDA/HIP graphs, all captured when the engine is built.

A step's shape is (slot bucket, verify rows, proposal blocks, filtered, expert budget); `step_shapes` lists every
shape an engine can launch: the buckets are the powers of two below max_slots and max_slots itself (the engine
compacts its requests into slots [0, n), so the bucket follows the number of requests), the verify rows 1 or
1 + d for each captured verify length d, the policy's (P, d, budget) options (`proposals.StepOption`), with and
without the top-k / top-p sort.
`capture_graphs` warms every shape up on a side stream (Triton compiles, cuBLAS workspaces), then captures
them largest first into one memory pool (the smaller graphs reuse the largest one's blocks). A capture
failure is an error naming the shape and the last torch op before it, never a silent eager fallback
(Engine(graphs=False) runs eagerly, for debugging).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import GraphCaptureError


def bucket(needed: int, max_slots: int) -> int:
    """The smallest power of two >= needed, capped at max_slots (one graph per bucket)."""
    return min(1 << (needed - 1).bit_length(), max_slots)


def slot_buckets(max_slots: int) -> list[int]:
    """Every bucket `bucket` returns for 1..max_slots, largest first."""
    return sorted({bucket(n, max_slots) for n in range(1, max_slots + 1)}, reverse=True)


def step_shapes(max_slots: int, block_size: int, options, shape_type) -> list:
    """Every `shape_type(slots, verify_rows, proposals, filtered, block_size, budget)` an engine launches, largest
    first.

    options: the (proposals, verify, budget) steps the policy may choose (`proposals.StepOption`). A step with P
    blocks has 1 + d verify rows after a step with proposals (drafts may exist), else 1; an AR step (P = 0) may
    follow a TiDAR step, so it comes with 1 and every 1 + d verify rows and no budget."""
    lengths = sorted({o.verify for o in options if o.proposals and block_size > 1})
    kinds = {(1, 0, None)} | {(1 + d, 0, None) for d in lengths}
    for o in options:
        if o.proposals and block_size > 1:
            kinds |= {(1, o.proposals, o.budget), (1 + o.verify, o.proposals, o.budget)}
    shapes = [shape_type(s, v, p, f, block_size, m) for s in slot_buckets(max_slots) for v, p, m in kinds
              for f in (True, False)]
    return sorted(shapes, key=lambda shape: (shape.slots * shape.rows, shape.filtered, shape.verify_rows,
                                             -1 if shape.budget is None else shape.budget), reverse=True)


class _LastOp(TorchDispatchMode):
    """Records the last torch op dispatched (the op a capture failed at, or the one just before it)."""

    def __init__(self):
        super().__init__()
        self.last = "none (before the first torch op)"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.last = str(func)
        return func(*args, **(kwargs or {}))


def capture(shape, run, pool, graph_type=None, graph_context=None):
    """One captured graph of `run(shape)`; GraphCaptureError naming the shape and the op on failure."""
    graph_type = graph_type or torch.cuda.CUDAGraph
    graph_context = graph_context or torch.cuda.graph
    graph = graph_type()
    trace = _LastOp()
    try:
        with graph_context(graph, pool=pool), trace:
            run(shape)
    except Exception as error:
        raise GraphCaptureError(
            f"decode step {shape} could not be captured as a CUDA/HIP graph; the last torch op before the failure: "
            f"{trace.last} ({type(error).__name__}: {error}). Engine(graphs=False) runs every step eagerly "
            f"(for debugging)") from error
    return graph


def capture_graphs(shapes, run, pool) -> dict:
    """{shape: graph} for every shape: all warmed up on a side stream first, then captured in order (largest
    first) into `pool`."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for shape in shapes:
            run(shape)
    torch.cuda.current_stream().wait_stream(side)
    return {shape: capture(shape, run, pool) for shape in shapes}
