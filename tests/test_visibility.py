"""The visibility rule written once (zdiff.pattern.visibility): the dense mask it builds from per-sequence
device tensors equals DESIGN.md's transcribed layouts on ragged batches, it never synchronises with the host,
and the attention kernels' `_visible` is that same function rendered."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transcribed_layouts import brute_force_decode, brute_force_prefill, brute_force_training
from zdiff.pattern import BatchLayout, decode_pattern, dense_visible, layout_visible
from zdiff.pattern.visibility import triton_visible_source


def _expected(kind, sequences, block, levels, T, S):
    """The batch mask assembled from the transcriptions: (B, T, S + T), padding rows see only themselves."""
    out = torch.zeros(len(sequences), T, S + T, dtype=torch.bool)
    out[:, torch.arange(T), S + torch.arange(T)] = True
    for b, seq in enumerate(sequences):
        if seq is None:
            continue
        if kind == "training":
            full, C = brute_force_training(seq, block), 0
        elif kind == "prefill":
            full, C = brute_force_prefill(seq, block), 0
        else:
            C, m, count = seq
            full = brute_force_decode(C, m, block, levels[:count])
        n = full.shape[0] - C
        out[b, :n] = False
        out[b, :n, :C] = full[C:, :C]  # the context rows are the cache
        out[b, :n, S:S + n] = full[C:, C:]
    return out


def _numbers(kind, sequences, block):
    cache, causal, rows = [], [], []
    for seq in sequences:
        if seq is None:
            c, k, n = 0, 0, 0
        elif kind == "training":
            c, k, n = 0, seq, 2 * seq
        elif kind == "prefill":
            c, k, n = 0, seq, seq + block
        else:
            C, m, count = seq
            c, k, n = C, m + 1, m + 1 + block * count
        cache.append(c), causal.append(k), rows.append(n)
    return cache, causal, rows


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(["training", "prefill", "decode"]), block=st.integers(1, 6), data=st.data())
def test_dense_visible_of_ragged_batches_matches_the_transcribed_layouts(kind, block, data):
    extra = data.draw(st.sets(st.integers(1, block - 1), max_size=2)) if block > 1 else set()
    levels = (0, *sorted(extra))  # decode levels always include 0
    if kind == "decode":
        seq = st.builds(lambda C, m: (C, m), st.integers(0, 12), st.integers(0, block - 1))
        drawn = data.draw(st.lists(st.one_of(st.none(), seq), min_size=1, max_size=4))
        sequences = [None if s is None else (s[0], s[1], sum(a <= s[1] for a in levels)) for s in drawn]
    else:
        sequences = data.draw(st.lists(st.one_of(st.none(), st.integers(1, 13)), min_size=1, max_size=4))
    cache, causal, rows = _numbers(kind, sequences, block)
    T = max(rows) + data.draw(st.integers(0, 3))  # padded, sometimes past the longest sequence
    S = max(cache) + data.draw(st.integers(0, 3))  # cache slots beyond the longest cache are never seen
    numbers = (torch.tensor(x, dtype=torch.int32) for x in (cache, causal, rows))
    got = dense_visible(kind, block, levels, *numbers, T, S)
    assert torch.equal(got, _expected(kind, sequences, block, levels, T, S))


def test_building_the_mask_never_reads_device_values_on_the_host():
    """On the meta device a tensor has no values: any .item() / .tolist() / nonzero / bool() of a tensor
    would raise. The builder runs there, so it needs no host synchronisation on a GPU either."""
    meta = [torch.tensor([5, 0, 2], dtype=torch.int32, device="meta") for _ in range(3)]
    for kind in ("training", "prefill", "decode"):
        mask = dense_visible(kind, 4, (0, 1, 3), *meta, padded_rows=20, cache_slots=9)
        assert mask.shape == (3, 20, 29) and mask.dtype == torch.bool and mask.device.type == "meta"


def test_a_duck_typed_layout_gets_its_mask_on_its_own_device():
    """The decode engine's layout only has kind, block_size, levels and tensors(device)."""
    patterns = [decode_pattern(6, 2, 4, (0, 1)), decode_pattern(3, 0, 4, (0,))]
    reference = BatchLayout.of_patterns(patterns, 4)

    class EngineLayout:
        kind, block_size, levels = "decode", 4, (0, 1)

        def tensors(self, device):
            return tuple(torch.tensor(x, dtype=torch.int32, device=device)
                         for x in (reference.cache_lengths, reference.causal_rows, reference.rows))

    assert torch.equal(layout_visible(EngineLayout(), 16, 8), reference.dense_visible(16, 8))


def test_the_kernel_predicate_is_the_rule_rendered():
    """Run the rendered Triton source with torch standing in for triton.language: it must agree with the rule
    for every (row, key) of a ragged decode layout (the kernels' own tests then compare them with this mask)."""
    import types

    tl = types.SimpleNamespace(maximum=torch.maximum, minimum=torch.minimum, where=torch.where,
                               constexpr=int)
    levels = (0, 2, 3)
    namespace = {"tl": tl, "triton": types.SimpleNamespace(jit=lambda f: f),
                 "_anchor": lambda j, n_causal, BLOCK: torch.tensor(levels)[j.clamp(max=2)] + 1}
    exec(triton_visible_source(), namespace)
    t = torch.arange(30).view(30, 1)
    u = torch.arange(30).view(1, 30)
    for n_causal, n_rows in ((1, 13), (3, 27), (4, 4), (0, 0)):
        got = namespace["_visible"](t, u, torch.tensor(n_causal), torch.tensor(n_rows), 8)
        mask = dense_visible("decode", 8, levels, torch.tensor([0]), torch.tensor([n_causal]),
                             torch.tensor([n_rows]), 30)[0]
        valid = torch.arange(30) < n_rows
        assert torch.equal(got[valid], mask[valid]) and not got[~valid].any()
