"""The q/k RMSNorm + RoPE kernel of plain GQA layers (interpreter on the CPU) against the float64 reference
modules, on strided projection views, partial rotary dims and scaled RoPE; its AOT compilation."""

import pytest
import torch

from conftest import DEVICE, aot_family_reports, assert_close
from zdiff.codegen.families.rope import plans, qk_rope_plan
from zdiff.codegen.render import load_module, render
from zdiff.runtime.norms import RMSNorm
from zdiff.runtime.rope import apply_rope, rope_cos_sin
from zdiff.spec import load_spec
from zdiff.spec.schema import RopeScalingSpec


def _module(tmp_path, head_dim, rotary_dim, norm):
    plan = qk_rope_plan(head_dim, rotary_dim, norm)
    path = tmp_path / f"{plan.name}.py"
    path.write_text(render(plan, load_spec("dense-tiny")))
    return load_module(path, f"{plan.name}_{tmp_path.name}")


@pytest.mark.parametrize("head_dim, rotary_dim, norm, heads", [(32, 32, True, 3), (48, 24, True, 2), (32, 16, False, 4),
                                                               (16, 16, False, 1)])
def test_qk_rope_matches_the_reference_modules(tmp_path, poison_allocations, head_dim, rotary_dim, norm, heads):
    module = _module(tmp_path, head_dim, rotary_dim, norm)
    gen = torch.Generator().manual_seed(head_dim + rotary_dim + heads)
    B, T = 2, 5
    # q as the projection produces it: a view into a wider (B, T, ...) row, so the token stride is not heads * D
    wide = (torch.randn(B, T, (heads + 2) * head_dim, generator=gen) * 2 + 0.3).to(DEVICE)
    x = wide[..., head_dim: (heads + 1) * head_dim].view(B, T, heads, head_dim)
    positions = torch.randint(0, 500, (B, T), generator=gen).to(DEVICE)
    scaling = RopeScalingSpec("yarn", 4.0, 64, attention_factor=1.2)
    cos, sin = rope_cos_sin(positions, rotary_dim, 1e4, torch.float32, scaling)
    weight = (1 + 0.3 * torch.randn(head_dim, generator=gen)).to(DEVICE)

    ref = x.double()
    if norm:
        rms = RMSNorm(head_dim, 1e-6).double().to(DEVICE)
        with torch.no_grad():
            rms.weight.copy_(weight.double())
            ref = rms(ref)
    expected = apply_rope(ref, cos.double(), sin.double())
    with torch.no_grad():
        actual = module.qk_rope(x, weight if norm else None, 1e-6, cos, sin)
    assert actual.is_contiguous() and actual.shape == x.shape
    assert_close(actual, expected, rtol=1e-5, atol=1e-5, what="q/k norm + RoPE")


def test_qk_rope_refuses_a_tensor_that_needs_a_gradient(tmp_path):
    module = _module(tmp_path, 32, 32, False)
    x = torch.randn(1, 2, 1, 32, device=DEVICE, requires_grad=True)
    cos, sin = rope_cos_sin(torch.arange(2).view(1, 2), 32, 1e4, torch.float32)
    with pytest.raises(RuntimeError, match="has no backward"):
        module.qk_rope(x, None, 0.0, cos, sin)


def test_plans_cover_plain_gqa_only():
    assert [p.name for p in plans(load_spec("dense-tiny"), "fp32", "cpu")] == ["qk_rope_d32_r32_rms"]
    assert [p.name for p in plans(load_spec("llama-3.2-1b"), "fp32", "cpu")] == ["qk_rope_d64_r64"]
    assert plans(load_spec("zaya1-tiny"), "fp32", "cpu") == []  # CCGQA rotates inside its CCA kernel


def test_qk_rope_compiles_ahead_of_time_without_spills():
    reports = aot_family_reports("rope", targets=("mi300x", "mi355x", "h100"), spec="qwen3-8b")
    assert {r["arch"] for r in reports} == {"gfx942", "gfx950", "sm_90"} and len(reports) == 3
    for r in reports:
        assert r["spills"] == 0 and r["registers"] > 0 and r["occupancy"] >= 1, r


def test_autotune_hook_runs_the_entry_with_the_given_config(tmp_path):
    from zdiff.codegen.families.rope import config_space

    module = _module(tmp_path, 48, 24, True)
    plan = qk_rope_plan(48, 24, True)
    assert set(module.BENCH) == set(module.AOT) == set(plan.configs) and not module.BENCH_SKIPPED
    for entry, make in module.BENCH.items():
        assert {"num_warps": 2} in config_space(plan, entry, "mi300x")
        with torch.no_grad():
            out = make(16, {"num_warps": 2}, device="cpu")()
        assert torch.isfinite(out).all() and out.shape == (1, 2, 8, 48)
