"""One script for a session that is lent a GPU: check correctness on the device, then time.

    PYTHONPATH=. python benchmarks/gpu_session.py --out "$OUT"          # on the GPU machine
    TRITON_INTERPRET=1 python benchmarks/gpu_session.py --smoke        # CPU: tiny shapes, logic only

Checks (bf16 / fp32 on the device, against the reference implementations):
  - fused verifier == reference verifier draw for draw (given noise), ZAYA1 vocabulary, and its
    keyed in-kernel draws unchanged when the sequences move to other slots;
  - rendered RMSNorm kernel forward / backward vs the fp64 reference;
  - TiDAR attention (decode with and without split-KV, training fwd + bwd) and the MoE kernels in
    bf16 vs fp64, next to the same computation's plain bf16 PyTorch error (attention_bench, moe_bench);
  - the generated model (backend="triton") vs the reference model on the tiny spec, fp32 logits;
  - the test suite's `gpu`-marked tests (`pytest -m gpu`; they skip on CPU-only machines).
Times (triton.testing.do_bench, median):
  - fused verifier (split-vocabulary kernels, a few block sizes and warp counts)
    at batch 1, 8, 32 with 15 drafts over 262,272 logits, achieved GB/s of logits read;
  - RMSNorm forward and backward at 8192 x 2048 bf16 vs the torch reference, GB/s;
  - decode-layout attention vs SDPA with the boolean mask (attention_bench), MoE experts vs
    torch._grouped_mm and a per-expert loop (moe_bench).
Writes results.json and results.md (card, versions, date) into --out for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from zdiff.codegen.families.norms import norm_plan  # noqa: E402
from zdiff.codegen.render import load_module, render  # noqa: E402
from zdiff.generation.batched_sampling import KIND_CODES  # noqa: E402
from zdiff.generation.oracle import sampling  # noqa: E402
from zdiff.generation.verify import verify_slots  # noqa: E402
from zdiff.runtime.norms import RMSNorm  # noqa: E402
from zdiff.sampler import SamplingParams  # noqa: E402
from zdiff.spec import load_spec  # noqa: E402


def bench(fn, smoke: bool) -> float:
    if smoke:
        fn()
        return float("nan")
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def check_verifier(device, V, B, M, results):
    gen = torch.Generator().manual_seed(0)
    params = SamplingParams(sampler="lossless", temperature=0.9, banned=(V - 1,))
    ar = torch.randn(B, M + 1, V, generator=gen) * 3
    draft = ar[:, :M] + 0.5 * torch.randn(B, M, V, generator=gen)  # close to the target: long acceptances
    q = sampling.probabilities(draft, params)
    drafts = torch.stack([torch.multinomial(q[b], 1, generator=gen).squeeze(-1) for b in range(B)])
    num = torch.full((B,), M)
    uniforms = torch.rand(B, M, generator=gen)
    gumbel = sampling.draw_gumbel((B, M + 1, V), gen)
    args = (ar.to(device), draft.to(device), drafts.to(device), num.to(device), params)
    acc, tok = fused_verify(*args, given=(uniforms.to(device), gumbel.to(device)))
    mismatches = 0
    for b in range(B):
        target = sampling.target_probs(ar[b], draft[b], params)
        expected = sampling.verify_stochastic(target, q[b], drafts[b], uniforms[b], gumbel[b])
        mismatches += (int(acc[b]), int(tok[b])) != expected
    # keyed noise: a sequence's draws do not depend on its place in the batch (same seed and positions), and the
    # torch backend draws the same tokens as the kernels (the one randomness scheme; floats differ by ulps here)
    rng_mismatches = 0
    keyed = fused_verify_slots_of(args, 7, torch.arange(B, device=device))
    on_torch = fused_verify_slots_of(args, 7, torch.arange(B, device=device), backend="torch")
    backend_mismatches = int((keyed[0] != on_torch[0]).sum() + (keyed[1] != on_torch[1]).sum())
    perm = torch.randperm(B, generator=gen).to(device)
    for seed in range(4):
        base = fused_verify_slots_of(args, seed, torch.arange(B, device=device))
        moved = fused_verify_slots_of(tuple(a[perm] if torch.is_tensor(a) else a for a in args), seed, perm)
        rng_mismatches += int((moved[0] != base[0][perm]).sum() + (moved[1] != base[1][perm]).sum())
    results["checks"]["fused_verify_matches_reference"] = {"sequences": B, "vocab": V, "mismatches": mismatches,
                                                           "rng_mismatches_when_slots_move": rng_mismatches,
                                                           "torch_backend_token_mismatches": backend_mismatches}
    return mismatches == 0 and rng_mismatches == 0


def fused_verify_slots_of(args, seed, slot_ids, backend="fused", given=None, **launch):
    """The engine's verifier on one sampler's inputs; slot s keyed on (seed + slot id, position 0)."""
    ar, draft, drafts, num, params = args
    B, dev = ar.shape[0], ar.device
    full = lambda v, dtype=torch.float32: torch.full((B,), v, dtype=dtype, device=dev)  # noqa: E731
    return verify_slots(backend, ar, draft, drafts, num, full(0, torch.long),
                        full(KIND_CODES[params.sampler], torch.long),
                        full(params.temperature), full(params.top_k, torch.long), full(params.top_p),
                        full(params.mix_weight), seed + slot_ids.to(dev), params.banned[0], False, given=given,
                        **launch)


def fused_verify(ar, draft, drafts, num, params, seed=0, given=None, **launch):
    return fused_verify_slots_of((ar, draft, drafts, num, params), seed, torch.arange(ar.shape[0]), given=given,
                                 **launch)


def time_verifier(device, V, M, batches, smoke, results):
    """Split-vocabulary kernels at a few block sizes / warps, on the same card."""
    params = SamplingParams(sampler="lossless", banned=(V - 1,))
    configs = [("split", dict(block_v=1024, num_warps=4))] if smoke else [
        ("split", dict(block_v=1024, num_warps=4)), ("split", dict(block_v=2048, num_warps=4)),
        ("split", dict(block_v=2048, num_warps=8)), ("split", dict(block_v=4096, num_warps=8))]
    for B in batches:
        ar = torch.randn(B, M + 1, V, device=device)
        draft = ar[:, :M].clone()  # identical distributions: every draft accepted, the longest path
        drafts = torch.zeros(B, M, dtype=torch.long, device=device)
        num = torch.full((B,), M, device=device)
        bytes_read = B * (2 * M + 1) * V * 4  # every accepted row's target and draft logits once, the bonus row once
        for impl, config in configs:
            ms = bench(lambda: fused_verify(ar, draft, drafts, num, params, seed=1, **config), smoke)
            gbs = bytes_read / (ms * 1e-3) / 1e9 if ms == ms else None
            results["timings"].append({"kernel": "fused_verify", "impl": impl, **config, "batch": B, "drafts": M,
                                       "vocab": V, "ms": ms, "GB/s": gbs})


def rmsnorm_module(D, dtype):
    plan = norm_plan("rmsnorm", D, dtype=dtype)
    path = Path(tempfile.mkdtemp()) / f"{plan.name}.py"
    path.write_text(render(plan, load_spec("zaya1-8b")))
    return load_module(path, plan.name)


def check_and_time_rmsnorm(device, N, D, dtype, smoke, results):
    module = rmsnorm_module(D, "bf16" if dtype == torch.bfloat16 else "fp32")
    x = torch.randn(N, D, device=device, dtype=dtype, requires_grad=True)
    w = (1 + 0.1 * torch.randn(D, device=device)).to(dtype).requires_grad_()
    dy = torch.randn(N, D, device=device, dtype=dtype)
    ref = RMSNorm(D, 1e-5).double().to(device)
    with torch.no_grad():
        ref.weight.copy_(w.double())
    x64 = x.detach().double().requires_grad_()
    y64 = ref(x64)
    y64.backward(dy.double())
    y = module.rms_norm(x, w, 1e-5)
    y.backward(dy)
    dw_scale = max(1.0, ref.weight.grad.abs().max().item())
    errors = {"forward": (y.double() - y64).abs().max().item(), "dx": (x.grad.double() - x64.grad).abs().max().item(),
              "dw": (w.grad.double() - ref.weight.grad).abs().max().item() / dw_scale}
    results["checks"][f"rmsnorm_{N}x{D}_{dtype}"] = errors
    ok = errors["forward"] < 0.05 and errors["dx"] < 0.05 and errors["dw"] < 0.05
    ref_cast = RMSNorm(D, 1e-5).to(device=device, dtype=dtype)
    xd = x.detach()
    for name, fn in (("rmsnorm_fwd zdiff", lambda: module.rms_norm(xd, w.detach(), 1e-5)),
                     ("rmsnorm_fwd torch", lambda: ref_cast(xd))):
        ms = bench(fn, smoke)
        results["timings"].append({"kernel": name, "rows": N, "D": D, "dtype": str(dtype), "ms": ms,
                                   "GB/s": 2 * N * D * x.element_size() / (ms * 1e-3) / 1e9 if ms == ms else None})
    return ok


def check_generated_model(device, results) -> bool:
    """backend="triton" vs the reference on the tiny spec (random weights), fp32 logits of a causal pass."""
    from zdiff.codegen.generated import generated_model_class
    from zdiff.runtime import build_model

    spec = load_spec("zaya1-tiny")
    reference = build_model(spec.model, seed=3, device=device)
    generated = generated_model_class(spec, device)(spec.model).to(device)
    generated.load_state_dict(reference.state_dict())
    ids = torch.randint(0, 256, (2, 50), device=device)
    with torch.no_grad():
        err = (generated(ids) - reference(ids)).abs().max().item()
    results["checks"]["generated_model_fp32_max_logit_err"] = err
    return err < 1e-2  # tf32 matmuls inside the kernels


def run_gpu_tests(results) -> bool:
    """The suite's `gpu`-marked tests on this device; the summary line goes into the checks."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    results["checks"]["gpu_tests"] = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return done.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_results"))
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, no timing (CPU / interpreter)")
    parser.add_argument("--stages", default="all", help="comma-separated subset of: verifier, rmsnorm, "
                        "verifier_timing, generated_model, attention_bench, moe_bench, gpu_tests")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"date": datetime.date.today().isoformat(),
               "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
               "triton": triton.__version__, "checks": {}, "timings": []}
    V, N, D = (40, 6, 48) if args.smoke else (262272, 8192, 2048)
    wanted = None if args.stages == "all" else set(args.stages.split(","))

    def stage(name, fn):
        """Run one part; a failure is recorded and the others still run (device time is scarce)."""
        if wanted is not None and name not in wanted:
            return True
        try:
            return bool(fn())
        except Exception as error:
            results["checks"][f"{name}_error"] = repr(error)[:2000]
            return False

    ok = stage("verifier", lambda: check_verifier(device, V, B=3 if args.smoke else 8, M=3 if args.smoke else 15,
                                                  results=results))
    norm_dtype = torch.float32 if device == "cpu" else torch.bfloat16
    ok &= stage("rmsnorm", lambda: check_and_time_rmsnorm(device, N, D, norm_dtype, args.smoke, results))
    ok &= stage("verifier_timing", lambda: time_verifier(device, V, M=3 if args.smoke else 15,
                                                         batches=(1,) if args.smoke else (1, 8, 32), smoke=args.smoke,
                                                         results=results) or True)
    ok &= stage("generated_model", lambda: check_generated_model(device, results))
    for name in ("attention_bench", "moe_bench"):
        ok &= stage(name, lambda name=name: __import__(name).run(device, args.smoke, results))
    if not args.smoke:  # the smoke run is itself part of the test suite
        ok &= stage("gpu_tests", lambda: run_gpu_tests(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [f"{results['device']}, torch {results['torch']}, triton {results['triton']}, {results['date']}", "",
             "| kernel | shape | ms | GB/s |", "|---|---|---|---|"]
    for t in results["timings"]:
        shape = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.items()
                          if k not in ("kernel", "ms", "GB/s"))
        gbs = f"{t['GB/s']:.0f}" if t.get("GB/s") else "-"
        ms = t.get("ms", float("nan"))
        lines.append(f"| {t['kernel']} | {shape} | {ms:.4f} | {gbs} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(results["checks"], indent=1))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
