"""TiDAR attention kernels (interpreter on the CPU) against the dense-mask reference.

Every layout, forward and (training) gradients, ragged sequences, GQA packing, split-KV
decode, poisoned allocations; the compiled tile classification against the dense mask;
ahead-of-time compilation for every GPU target without spills.
"""


import pytest
import torch

from conftest import DEVICE, aot_family_reports, assert_close
from zdiff.codegen.families.attention import attention_plan
from zdiff.codegen.render import load_module, render
from zdiff.pattern import BatchLayout, decode_pattern, prefill_pattern, training_pattern
from zdiff.runtime.attention import attention_reference
from zdiff.spec import load_spec

GROUP, HKV = 2, 2


def _module(tmp_path, layout, head_dim=24, block=4, levels=(0, 1, 3)):
    plan = attention_plan(layout, GROUP, HKV, head_dim, block, levels)
    path = tmp_path / f"{plan.name}.py"
    path.write_text(render(plan, load_spec("zaya1-tiny")))
    return load_module(path, f"{plan.name}_{tmp_path.name}")


def _qkv(gen, B, T, D, cache=0):
    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE)
    q, k, v = rnd(B, T, HKV * GROUP, D), rnd(B, T, HKV, D), rnd(B, T, HKV, D)
    return (q, k, v) if not cache else (q, k, v, rnd(B, cache, HKV, D), rnd(B, cache, HKV, D))


def _valid_rows(out, rows):
    return torch.cat([out[b, :n] for b, n in enumerate(rows)])


@pytest.mark.parametrize("seq_len,diffusion", [(13, True), (8, True), (11, False)])
def test_training_layout_forward_and_gradients(tmp_path, poison_allocations, seq_len, diffusion):
    module = _module(tmp_path, "training")
    layout = BatchLayout.training(2, seq_len, 4, diffusion=diffusion)
    T = layout.rows[0]
    gen = torch.Generator().manual_seed(seq_len)
    q, k, v = (x.requires_grad_() for x in _qkv(gen, 2, T, 24))
    visible = layout.dense_visible(T).to(DEVICE)
    if diffusion:
        assert torch.equal(visible[0].cpu(), training_pattern(seq_len, 4).dense_mask())
    scale = 24 ** -0.5
    out = module.tidar_attention(q, k, v, None, *layout.tensors(DEVICE)[1:], scale)
    ref = attention_reference(q.double(), k.double(), v.double(), visible, scale)
    assert_close(out, ref, rtol=1e-5, atol=1e-5, what="out")
    do = torch.randn(out.shape, generator=gen).to(DEVICE)
    grads = torch.autograd.grad(out, (q, k, v), do)
    expected = torch.autograd.grad(ref, (q, k, v), do.double())
    for got, want, name in zip(grads, expected, ("dq", "dk", "dv")):
        assert_close(got, want, rtol=1e-4, atol=1e-5, what=name)


@pytest.mark.parametrize("splits", [1, 3])
def test_decode_layout_ragged_batch_with_cache(tmp_path, poison_allocations, splits):
    """Per-sequence cache lengths, drafts and proposal counts; padding rows come out as zeros."""
    module = _module(tmp_path, "decode")
    levels, block, slots = (0, 1, 3), 4, 45
    steps = [(41, 3), (5, 0), (0, 2), (17, 1)]  # (cached keys, drafts)
    patterns = [decode_pattern(C, m, block, tuple(a for a in levels if a <= m)) for C, m in steps]
    layout = BatchLayout.of_patterns(patterns, block)
    assert layout.kind == "decode" and layout.levels == levels
    T = max(layout.rows)
    gen = torch.Generator().manual_seed(splits)
    q, k, v, kc, vc = _qkv(gen, len(steps), T, 24, cache=slots)
    visible = layout.dense_visible(T, slots)
    for b, p in enumerate(patterns):  # the layout's mask is the patterns' mask
        C, n = layout.cache_lengths[b], layout.rows[b]
        assert torch.equal(visible[b, :n, :C], p.query_mask()[:, :C])
        assert torch.equal(visible[b, :n, slots:slots + n], p.query_mask()[:, C:])
    cache_lengths, causal_rows, rows = layout.tensors(DEVICE)
    out, _ = module.attention_forward(q, k, v, cache_lengths, causal_rows, rows, 0.3, kc, vc, splits=splits)
    ref = attention_reference(q.double(), torch.cat([kc, k], 1).double(), torch.cat([vc, v], 1).double(),
                              visible.to(DEVICE), 0.3)
    assert_close(_valid_rows(out, layout.rows), _valid_rows(ref, layout.rows), rtol=1e-5, atol=1e-5, what="out")
    for b, n in enumerate(layout.rows):
        assert (out[b, n:] == 0).all(), f"padding rows of sequence {b} must be zeros"


def test_prefill_layout_ragged_prompts(tmp_path, poison_allocations):
    module = _module(tmp_path, "prefill")
    prompts = [9, 2, 5]
    layout = BatchLayout.of_patterns([prefill_pattern(n, 4) for n in prompts], 4)
    T = max(layout.rows)
    gen = torch.Generator().manual_seed(3)
    q, k, v = _qkv(gen, 3, T, 24)
    visible = layout.dense_visible(T)
    for b, n in enumerate(prompts):
        assert torch.equal(visible[b, :n + 4, :n + 4], prefill_pattern(n, 4).dense_mask())
    out = module.tidar_attention(q, k, v, None, *layout.tensors(DEVICE)[1:], 0.2)
    ref = attention_reference(q.double(), k.double(), v.double(), visible.to(DEVICE), 0.2)
    assert_close(_valid_rows(out, layout.rows), _valid_rows(ref, layout.rows), rtol=1e-5, atol=1e-5, what="out")
    with pytest.raises(RuntimeError, match="inference-only"):
        module.tidar_attention(q.requires_grad_(), k, v, None, *layout.tensors(DEVICE)[1:], 0.2).sum().backward()


@pytest.mark.parametrize("layout_kind", ["training", "prefill", "decode"])
def test_compiled_tile_classification_against_the_dense_mask(tmp_path, layout_kind):
    """Empty means no row sees any key (exact both ways); full means every row sees every key."""
    module = _module(tmp_path, layout_kind, levels=(0, 2, 3))
    block = 4
    if layout_kind == "training":
        layout = BatchLayout.training(1, 14, block)
    elif layout_kind == "prefill":
        layout = BatchLayout.of_patterns([prefill_pattern(10, block)], block)
    else:
        layout = BatchLayout.of_patterns([decode_pattern(0, 3, block, (0, 2, 3))], block)
    n_causal, n = layout.causal_rows[0], layout.rows[0]
    mask = layout.dense_visible(n)[0]
    gen = torch.Generator().manual_seed(7)
    tiles = []
    while len(tiles) < 300:
        t0, n0 = (int(x) for x in torch.randint(0, n, (2,), generator=gen))
        t1 = t0 + int(torch.randint(0, 9, (1,), generator=gen))  # may run past the valid rows
        n1 = n0 + int(torch.randint(1, 9, (1,), generator=gen))
        tiles.append((t0, t1, n0, n1))
    first, last, lo, hi = (torch.tensor(c, dtype=torch.int32, device=DEVICE) for c in zip(*tiles))
    classes = torch.full((len(tiles),), -1, dtype=torch.int32, device=DEVICE)
    tile_class = next(kernel for name, kernel in vars(module).items() if name.endswith("_tile_class"))
    tile_class[(len(tiles),)](first, last, lo, hi, classes, n_causal, n, BLOCK=block)
    for (t0, t1, n0, n1), c in zip(tiles, classes.tolist()):
        seen = mask[t0:min(t1, n - 1) + 1, n0:min(n1, n)]
        in_range = t1 < n and n1 <= n
        assert (c != 0) == bool(seen.any()), (t0, t1, n0, n1, c)
        if c == 2:  # full is conservative: a full tile may be called partial, never the reverse
            assert in_range and bool(seen.all()), (t0, t1, n0, n1)
    assert {0, 1, 2} <= set(classes.tolist()), "the sample should contain empty, partial and full tiles"


def test_attention_kernels_compile_ahead_of_time_without_spills():
    """ZAYA1-8B shapes, default configs, every entry point, gfx942 / gfx950 / sm_90 (real compilation)."""
    reports = aot_family_reports("attention")
    assert {r["arch"] for r in reports} == {"gfx942", "gfx950", "sm_90"}
    for r in reports:
        assert r["spills"] == 0 and r["scratch_bytes"] == 0, r
        if "combine" not in r["kernel"]:
            assert r["matrix_instructions"], f"{r['kernel']} on {r['target']} does not use MFMA / wgmma"


def test_attention_kernels_at_a_small_head_dim_compile_ahead_of_time_without_spills():
    """zaya1-tiny (head_dim 32): the defaults tuned at 128 must fit too; 8 warps on sm_90's dk/dv tile left a
    24-byte stack frame there, so `zdiff compile zaya1-tiny --target h200` failed."""
    reports = aot_family_reports("attention", spec="zaya1-tiny")
    assert {r["arch"] for r in reports} == {"gfx942", "gfx950", "sm_90"}
    assert any(r["kernel"].endswith("_bwd_dkdv") for r in reports)
    for r in reports:
        assert r["spills"] == 0 and r["scratch_bytes"] == 0, r
