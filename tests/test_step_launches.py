"""Launches of one whole decode step of the engine (zaya1-tiny, TiDAR, P = 2, the fused verifier and the step
kernels, in the interpreter), counted with tests/launch_counter.py and broken down by function: the forward, the
layout, the verifier, the commit, the bookkeeping (settle), the next drafts and the step's own glue. The forward
is the reference model's (torch ops, fast on a CPU): what runs outside it does not depend on the model, and the
generated forward's own launches are pinned per layer by tests/test_kernel_count.py.

Pinned: the layout, the commit and the bookkeeping are one Triton launch each (the bookkeeping kernel also
advances the lengths), the step launches nothing of its own between its parts, nothing outside the forward
depends on the layer count or the number of slots, and the whole step outside the forward is at most 12
launches (issue 19); `test_outside_forward_launches_are_reported` prints the table (NOTES.md, "Launches per
decode step")."""

import dataclasses
from collections import Counter

import pytest

from launch_counter import count_launches
from zdiff.generation import decode_step as step_module
from zdiff.generation import engine as engine_module
from zdiff.generation.engine import Engine, RequestParams
from zdiff.generation.slots import SlotCache
from zdiff.runtime import build_model
from zdiff.spec import load_spec

# functions of decode_step's module counted on their own (the ones absent from a refactor are skipped)
STEP_FUNCTIONS = ("_layout_rows", "layout", "settle", "verify_slots", "sample_next_drafts", "_logits")
MY_PART = {"layout": {"layout_kernel": 1}, "settle": {"settle_kernel": 1}, "commit": {"commit_kernel": 1}}
# issue 19's bounds on a whole step outside the forward (any batch, any layer count)
MAX_OUTSIDE_FORWARD = 12
MAX_OUTSIDE_FORWARD_FILTERED = 20  # when some slot uses top-k or top-p


class _Attribution:
    """Launches of each wrapped function (innermost wins), the rest of the step as "glue"."""

    def __init__(self, counter):
        self.counter, self.parts, self._stack = counter, {}, []

    def _snapshot(self):
        return Counter(self.counter.torch_ops), Counter(self.counter.triton)

    def wrap(self, name, fn):
        def wrapped(*args, **kwargs):
            self._stack.append((name, self._snapshot()))
            try:
                return fn(*args, **kwargs)
            finally:
                _, (ops0, tri0) = self._stack.pop()
                ops1, tri1 = self._snapshot()
                ops, tri = ops1 - ops0, tri1 - tri0
                part = self.parts.setdefault(name, (Counter(), Counter()))
                part[0].update(ops)
                part[1].update(tri)
                for outer, _ in self._stack:  # an outer part does not count what an inner one did
                    self.parts.setdefault(outer, (Counter(), Counter()))
                    self.parts[outer][0].subtract(ops)
                    self.parts[outer][1].subtract(tri)
        return wrapped


def _step_launches(layers: int, slots: int, top_k: int = 0):
    spec = load_spec("zaya1-tiny")
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, num_layers=layers))
    model = build_model(spec.model, seed=0)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=slots, max_len=48, proposals=2, verifier="fused")
    for s in range(slots):
        engine.add([3 + s, 7, 11], RequestParams(max_new_tokens=40, seed=s, top_k=top_k if s == 0 else 0))
    engine.step()  # admission, prefill and the first (AR-shaped) step
    engine.step()  # drafts exist from here on: the steady-state shape
    counted = {}
    step = step_module.decode_step

    def counting_step(model, st, cache, shape, k):
        with count_launches() as counter:
            attribution = _Attribution(counter)
            with pytest.MonkeyPatch.context() as mp:
                for name in STEP_FUNCTIONS:
                    if hasattr(step_module, name):
                        mp.setattr(step_module, name, attribution.wrap(name, getattr(step_module, name)))
                mp.setattr(SlotCache, "commit", attribution.wrap("commit", SlotCache.commit))
                step(attribution.wrap("forward", model), st, cache, shape, k)
        glue = (Counter(counter.torch_ops), Counter(counter.triton))
        for ops, tri in attribution.parts.values():
            glue[0].subtract(ops)
            glue[1].subtract(tri)
        attribution.parts["glue"] = glue
        counted["parts"] = {name: (_by_name(ops), {t: n for t, n in tri.items() if n})
                            for name, (ops, tri) in attribution.parts.items()}
        counted["shape"] = shape

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_module, "decode_step", counting_step)
        engine.step()
    shape = counted["shape"]
    assert shape.verify_rows > 1 and shape.proposals == 2 and shape.filtered == bool(top_k), shape
    return counted["parts"]


def _by_name(ops: Counter) -> dict[str, int]:
    """torch ops by name, overloads summed (add_.Tensor, add_.Scalar -> add_)."""
    named = Counter()
    for op, n in ops.items():
        named[op.split(".")[0]] += n
    return {op: n for op, n in named.items() if n}


def _total(part) -> int:
    ops, tri = part
    return sum(ops.values()) + sum(tri.values())


def _outside_forward(parts) -> dict[str, int]:
    return {name: _total(part) for name, part in parts.items() if name != "forward"}


@pytest.fixture(scope="module")
def counts():
    return {(2, 4): _step_launches(2, 4), (4, 4): _step_launches(4, 4), (2, 2): _step_launches(2, 2),
            "top-k": _step_launches(2, 4, top_k=3)}


def test_layout_commit_and_bookkeeping_are_one_launch_each(counts):
    for key, parts in counts.items():
        for name, triton in MY_PART.items():
            assert parts[name] == ({}, triton), (key, name, parts[name])
        assert parts["glue"] == ({}, {}), parts["glue"]  # the step itself launches nothing between its parts


def test_launches_outside_the_forward_do_not_depend_on_layers_or_slots(counts):
    """(a slot with top-k adds the sort: compared separately)"""
    two_layers = _outside_forward(counts[(2, 4)])
    assert _outside_forward(counts[(4, 4)]) == two_layers
    assert _outside_forward(counts[(2, 2)]) == two_layers


def test_outside_forward_launches_are_reported(counts, capsys):
    for key, title in (((2, 4), "unfiltered"), ("top-k", "one slot with top-k")):
        parts = counts[key]
        outside = _outside_forward(parts)
        with capsys.disabled():
            print(f"\nlaunches per decode step (zaya1-tiny, 2 layers, 4 slots, TiDAR, P = 2, fused verifier, {title}):")
            for name, n in sorted(((k, v) for k, v in outside.items() if v), key=lambda item: -item[1]):
                print(f"  {name:20s} {n:4d}  {dict(parts[name][1]) or ''} {dict(parts[name][0]) if n < 40 else ''}")
            print(f"  {'outside the forward':20s} {sum(outside.values()):4d}; forward {_total(parts['forward'])}")
        mine = sum(outside[name] for name in MY_PART)
        assert mine == 3
        assert sum(outside.values()) > mine  # the verifier and the next drafts are counted too


def test_a_step_outside_the_forward_is_at_most_twelve_launches(counts):
    """Unfiltered samplers: layout 1, the verify rows' head matmul 1, verifier 3, bookkeeping 1, commit 1, next
    drafts 5 (rows, gather, head matmul, sample, pick). With top-k / top-p: one filter launch more per side
    (the verifier's targets and drafts, the next drafts), at most 20 (it was 91 with the sort as torch ops)."""
    for key in ((2, 4), (4, 4), (2, 2)):
        outside = _outside_forward(counts[key])
        assert sum(outside.values()) <= MAX_OUTSIDE_FORWARD, (key, outside)
    filtered = _outside_forward(counts["top-k"])
    assert sum(filtered.values()) <= MAX_OUTSIDE_FORWARD_FILTERED, filtered
    assert sum(filtered.values()) == sum(_outside_forward(counts[(2, 4)]).values()) + 3, filtered
