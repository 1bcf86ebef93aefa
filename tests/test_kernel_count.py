"""Kernels per layer of one decode step of the generated model (zaya1-tiny, CCGQA + MLP router; dense-tiny, GQA +
dense SwiGLU), pinned: the difference between a 4-layer and a 2-layer model, so it is exactly what one more layer
launches. Counted with a
TorchDispatchMode (torch ops that run a kernel) and a Triton launch counter, the Triton kernels not executed
(tests/launch_counter.py). Lower it deliberately when a fusion lands; it must never grow silently."""

import dataclasses

import torch

from launch_counter import count_launches
from zdiff.codegen.compile import compile_spec
from zdiff.codegen.render import load_module
from zdiff.generation.oracle import DecodeCache
from zdiff.pattern import BatchLayout, decode_pattern
from zdiff.runtime import build_model
from zdiff.spec import load_spec

# issue 11 measured 32 before (24 torch ops + 8 Triton launches): the router's RMSNorm ran as 6 torch ops, q and
# k as two GEMMs and a cat, a missing predecessor's value as a zeros + GEMV, the grouped-conv weight was
# permuted and the predecessors converted in every layer. Then 20 (11 torch ops: the router MLP's 3 addmm, 2 gelu,
# addcmul and out_proj mm, the q|k, v_delayed, v_current and o GEMMs; 9 Triton), now 10: the MLP router and its
# tail are one kernel at inference, and the four CCA projections one GEMM over the derived concatenation
TORCH_OPS_PER_LAYER = {"mm": 2}  # [q | k | v_delayed | v_current], o_proj
TRITON_PER_LAYER = 8  # 2 residual+norm, fused MLP router, CCA, attention, dispatch, gate_up, down
# dense-tiny (plain GQA with RMS q/k norm, dense SwiGLU MLP): the six GEMMs (q, k, v, o, gate_up, down: torch's)
# and the two residual adds. Was 20 torch ops + 6 launches before q/k norm and RoPE became one kernel per tensor
# (RoPE ran as 2 x (2 mul, 2 cat, neg, add)). One [q|k|v] GEMM would save two mm but costs three copies until the
# attention kernel reads strided rows
DENSE_TORCH_OPS_PER_LAYER = {"mm": 6, "add": 2}
DENSE_TRITON_PER_LAYER = 6  # attn / MLP RMSNorm, q and k norm + RoPE, attention, fused SwiGLU


def _decode_step_counts(tmp_path, layers, preset="zaya1-tiny"):
    spec = load_spec(preset)
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, num_layers=layers))
    out = tmp_path / f"{preset}-layers{layers}"
    compile_spec(spec, "cpu", out, aot=False, check_targets=False, log=lambda *_: None)
    model = load_module(out / "model.py", f"count_{tmp_path.name}_{preset}_{layers}").GeneratedTransformer(spec.model)
    model.load_state_dict(build_model(spec.model, seed=0).state_dict())
    block, C, drafts, batch = spec.diffusion.block_size, 12, 4, 2
    pattern = decode_pattern(C, drafts, block, tuple(a for a in spec.diffusion.acceptance_levels if a <= drafts))
    cache = DecodeCache(spec.model, batch, 64)
    cache.lengths = [C] * batch
    predecessors = cache.state_predecessors(0) + [cache.extended_index(0, int(p))
                                                  for p in pattern.predecessors()[C:]]
    ids = torch.randint(0, 256, (batch, pattern.num_rows - C))
    kwargs = dict(positions=pattern.positions()[C:], predecessors=torch.tensor(predecessors), cache=cache,
                  layout=BatchLayout.of_patterns([pattern] * batch, block))
    with torch.no_grad():
        with count_launches(execute=False):
            model.forward_full(ids, **kwargs)  # the steady state: derived weights are made on the first call
        with count_launches(execute=False) as counter:
            model.forward_full(ids, **kwargs)
    return counter


def _per_layer(tmp_path, preset):
    two, four = _decode_step_counts(tmp_path, 2, preset), _decode_step_counts(tmp_path, 4, preset)
    torch_ops = {name.split(".")[0]: (four.torch_ops[name] - two.torch_ops[name]) / 2
                 for name in four.torch_ops | two.torch_ops}
    triton = sum(four.triton.values()) - sum(two.triton.values())
    return {name: n for name, n in torch_ops.items() if n}, triton / 2, dict(four.triton)


def test_kernels_per_decode_layer_are_pinned(tmp_path):
    torch_ops, triton, launches = _per_layer(tmp_path, "zaya1-tiny")
    assert torch_ops == TORCH_OPS_PER_LAYER, torch_ops
    assert triton == TRITON_PER_LAYER, launches


def test_dense_kernels_per_decode_layer_are_pinned(tmp_path):
    torch_ops, triton, launches = _per_layer(tmp_path, "dense-tiny")
    assert torch_ops == DENSE_TORCH_OPS_PER_LAYER, torch_ops
    assert triton == DENSE_TRITON_PER_LAYER, launches
