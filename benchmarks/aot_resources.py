"""Static resource report of every AOT-compiled kernel for every GPU target (no GPU needed).

Covers the fused verifier and draft-sampling kernels and every entry point `zdiff compile` builds for a spec
(default: zaya1-8b) with its default config for the target.

    python benchmarks/aot_resources.py > aot.md

Prints a Markdown table (registers, spills, LDS / shared memory, occupancy, matrix
instructions) for BENCHMARKS.md. Run it without TRITON_INTERPRET set.
"""

import os
import sys
import warnings

import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tempfile  # noqa: E402

from zdiff.codegen.aot import AOT_TARGETS, compile_for_target  # noqa: E402
from zdiff.codegen.compile import compile_spec  # noqa: E402
from zdiff.generation import draft_sampling, filter_kernel, verifier_kernel  # noqa: E402
from zdiff.spec import load_spec  # noqa: E402


def main() -> None:
    warnings.simplefilter("ignore")
    print(f"triton {triton.__version__}\n")
    print("| kernel | config | target | arch | regs | sgprs | spills | LDS/smem B | occupancy | matrix instr |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    # per-slot samplers: one build per logits type (the model's bf16; fp32 after top-k / top-p filtering)
    sampling = (verifier_kernel.aot_kernels(False) + draft_sampling.aot_kernels()
                + verifier_kernel.aot_kernels(False, logits="fp32", processed=True)
                + draft_sampling.aot_kernels(logits="fp32", processed=True)[:1] + filter_kernel.aot_kernels())
    for name, kernel, signature, constexprs, warps in sampling:
        for target in sorted(AOT_TARGETS):
            _, r = compile_for_target(kernel, signature, constexprs, target, num_warps=warps)
            logits = signature.get("ar_logits_ptr", signature.get("logits_ptr"))
            shape = ", ".join([f"{k}={v}" for k, v in constexprs.items() if k != "GIVEN_NOISE"]
                              + ([f"logits {logits[1:]}"] if logits else []))
            config = f"{shape}, {warps} warps"
            unit = "waves/SIMD" if r.arch.startswith("gfx") else "warps/SM"
            matrix = "yes" if r.matrix_instructions else "no"
            print(f"| {name} | {config} | {target} | {r.arch} | {r.registers} | {r.scalar_registers or '-'} | "
                  f"{r.spills} | {r.shared_bytes} | {r.occupancy} {unit} | {matrix} |")
    spec = load_spec(sys.argv[1] if len(sys.argv) > 1 else "zaya1-8b")
    for target in ("mi300x", "mi355x", "h200"):
        out = tempfile.mkdtemp(prefix="zdiff-aot-report-")
        manifest = compile_spec(spec, target, f"{out}/build", log=lambda *_: None)
        for kernel in manifest["kernels"]:
            for entry, r in kernel["aot"].items():
                config = ", ".join(f"{k}={v}" for k, v in sorted(kernel["configs"][entry].items()))
                unit = "waves/SIMD" if r["arch"].startswith("gfx") else "warps/SM"
                sgprs = f"{r['scalar_registers']} ({r['scalar_spills']} spilled to VGPR lanes)" if r["scalar_spills"] \
                    else (r["scalar_registers"] or "-")
                matrix = "yes" if r["matrix_instructions"] else "no"
                print(f"| {entry} | {config} | {target} | {r['arch']} | {r['registers']} | {sgprs} | {r['spills']} | "
                      f"{r['shared_bytes']} | {r['occupancy']} {unit} | {matrix} |")


if __name__ == "__main__":
    main()
