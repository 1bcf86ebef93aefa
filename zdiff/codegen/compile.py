"""`zdiff compile`: plans -> rendered Triton sources -> AOT binaries + manifest, in one directory.

Layout of the output directory:
  spec.yaml              the resolved spec the kernels came from
  kernels/<name>.py      readable, importable Triton source with its autograd wrapper
  model.py               the generated torch model wired to those kernels (backend="triton")
  binaries/<kernel>.<target>.{hsaco,cubin}   GPU targets only
  manifest.json          spec hash, Triton version, every kernel instance with its constants,
                         launch config and resource report
Nothing in it depends on time or on temporary paths (line info is disabled for AOT), so
compiling the same spec twice gives byte-identical files.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import triton
from tqdm import tqdm

from ..errors import ZdiffError
from ..outputs import atomic_directory, check_output
from ..spec import Spec, dump_spec
from ..targets import TARGETS, get_target, interpreter_refused, triton_interpreter
from .aot import check_fits, compile_entry
from .families import plan_kernels
from .plan import KernelModule
from .provenance import render_provenance
from .render import load_module, no_line_info, render, render_model

BINARY_EXT = {"hip": "hsaco", "cuda": "cubin"}


def compile_spec(spec: Spec, target: str, out_dir: str | Path, force: bool = False, log=print, aot: bool = True,
                 check_targets: bool = True, inputs=(), lock: bool = True) -> dict:
    """Render every kernel of `spec` for `target` and the model that uses them; with `aot`, also compile the
    GPU binaries and report their resources (`load_model(backend="triton")` skips that: the JIT compiles
    for the device at hand). `out_dir` follows zdiff.outputs (locked, whole or nothing, never onto an
    input); `lock=False` when the caller holds its lock."""
    get_target(target)
    if check_targets and target not in spec.targets:
        raise ZdiffError(f"targets: the spec lists {', '.join(spec.targets)}; add {target} to compile for it")
    if aot and target != "cpu" and triton_interpreter():
        raise ZdiffError(interpreter_refused("compiling for a GPU target") + " (or use --target cpu)")
    check_output(out_dir, force, inputs)
    dtype = "fp32" if target == "cpu" else "bf16"
    plans = plan_kernels(spec, dtype, target)
    with no_line_info(), atomic_directory(out_dir, force=force, inputs=inputs, lock=lock) as tmp:
        (tmp / "kernels").mkdir()
        entries = []
        for plan in tqdm(plans, desc=f"compile {target}", unit="kernel", leave=False):
            path = tmp / "kernels" / f"{plan.name}.py"
            path.write_text(render(plan, spec))
            entry = {"name": plan.name, "template": plan.template, "file": f"kernels/{plan.name}.py",
                     "constants": plan.constants, "configs": plan.configs}
            if aot and target != "cpu":
                entry["aot"] = _aot(load_module(path, plan.name), target, tmp / "binaries")
            entries.append(entry)
        (tmp / "model.py").write_text(render_model(spec, plans, target))
        manifest = {**render_provenance(target), "spec": spec.name, "spec_hash": spec.hash(), "target": target,
                    "triton_version": triton.__version__, "dtype": dtype, "kernels": entries}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (tmp / "spec.yaml").write_text(dump_spec(spec))
    log(f"compiled {len(entries)} kernel instance(s) of {spec.name} for {target} -> {out_dir}")
    return manifest


def _aot(module: KernelModule, target: str, binaries: Path) -> dict:
    binaries.mkdir(exist_ok=True)
    reports = {}
    for kernel_name in module.AOT:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled, report = compile_entry(module, kernel_name, target)
        check_fits(report, json.dumps(module.CONFIGS[kernel_name], sort_keys=True))
        ext = BINARY_EXT[TARGETS[target].backend]
        (binaries / f"{kernel_name}.{target}.{ext}").write_bytes(compiled.asm[ext])
        reports[kernel_name] = report.to_dict()
    return reports
