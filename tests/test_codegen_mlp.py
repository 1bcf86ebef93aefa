"""The dense MLP's fused SwiGLU kernels (interpreter on the CPU) against a float64 reference, and their AOT
compilation for the GPU targets."""

import pytest
import torch

from conftest import DEVICE, aot_family_reports, assert_close
from zdiff.codegen.families.mlp import plans, swiglu_plan
from zdiff.codegen.render import load_module, render
from zdiff.runtime.mlp import swiglu
from zdiff.spec import load_spec


def _module(tmp_path, ffn_size):
    plan = swiglu_plan(ffn_size)
    path = tmp_path / f"{plan.name}.py"
    path.write_text(render(plan, load_spec("dense-tiny")))
    return load_module(path, f"{plan.name}_{tmp_path.name}")


@pytest.mark.parametrize("shape, ffn_size, block", [((7, 80), 40, 16), ((2, 3, 200), 100, 64), ((1, 64), 32, 32),
                                                    ((5, 2, 96), 48, 1024)])
def test_swiglu_forward_and_backward_match_float64(tmp_path, poison_allocations, shape, ffn_size, block):
    """Ragged widths (the last column block partly masked), several blocks per row, leading batch dims."""
    module = _module(tmp_path, ffn_size)
    entries = [f"swiglu_i{ffn_size}_fwd", f"swiglu_i{ffn_size}_bwd"]
    for entry in entries:  # route the launch through a non-default column block
        module.TABLES[entry] = {1: {"BLOCK_I": block, "num_warps": 4}}
    gen = torch.Generator().manual_seed(ffn_size)
    gate_up = (torch.randn(shape, generator=gen) * 2).to(DEVICE)
    dy = torch.randn(*shape[:-1], ffn_size, generator=gen).to(DEVICE)

    ref_in = gate_up.double().requires_grad_()
    expected = swiglu(ref_in)
    expected.backward(dy.double())
    actual_in = gate_up.clone().requires_grad_()
    actual = module.swiglu(actual_in)
    actual.backward(dy)
    assert actual.shape == expected.shape
    assert_close(actual, expected, rtol=1e-5, atol=1e-6, what="silu(gate) * up")
    assert_close(actual_in.grad, ref_in.grad, rtol=1e-5, atol=1e-6, what="d gate_up")


def test_swiglu_refuses_the_wrong_width(tmp_path):
    module = _module(tmp_path, 40)
    with pytest.raises(ValueError, match="generated for gate_up rows of 80; got 64"):
        module.swiglu(torch.randn(3, 64, device=DEVICE))


def test_family_plans_only_dense_specs():
    assert [p.name for p in plans(load_spec("dense-tiny"), "fp32", "cpu")] == ["swiglu_i256"]
    assert plans(load_spec("zaya1-tiny"), "fp32", "cpu") == []


def test_swiglu_compiles_ahead_of_time_for_qwen3_8b_without_spills():
    """Real compilation of both entry points' default configs for gfx942 / gfx950 / sm_90, in subprocesses."""
    reports = aot_family_reports("mlp", targets=("mi300x", "mi355x", "h100"), spec="qwen3-8b")
    assert len(reports) == 2 * 3
    assert {r["arch"] for r in reports} == {"gfx942", "gfx950", "sm_90"}
    for r in reports:
        assert r["spills"] == 0 and r["registers"] > 0 and r["occupancy"] >= 1, r


def test_autotune_hooks_run_each_entry_with_the_given_config(tmp_path):
    """autotune's benchmark hooks (device="cpu" in the interpreter) and the config space they are fed."""
    from zdiff.codegen.families.mlp import config_space

    module = _module(tmp_path, 40)
    plan = swiglu_plan(40)
    assert set(module.BENCH) == set(module.AOT) == set(plan.configs) and not module.BENCH_SKIPPED
    for entry, make in module.BENCH.items():
        space = config_space(plan, entry, "h100")
        assert {"BLOCK_I": 256, "num_warps": 8} in space and all(c["BLOCK_I"] >= 16 for c in space)
        out = make(5, {"BLOCK_I": 16, "num_warps": 2}, device="cpu")()
        assert torch.isfinite(out).all() and out.shape[0] == 5
