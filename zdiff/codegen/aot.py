"""Ahead-of-time compilation for GPU targets on a machine without a GPU, with resource reports.

`triton.compile(ASTSource(...), target=GPUTarget(...))` produces AMDGCN + hsaco for gfx942 /
gfx950 and PTX + cubin for sm_90. The report reads registers, spills and LDS from the AMDGCN
metadata, and registers / local memory / shared memory from `cuobjdump --dump-resource-usage`
(shipped with the triton wheel) for CUDA. Occupancy is the register- and LDS/smem-limited
estimate: waves per SIMD on CDNA (512 VGPRs per lane, granule 8, at most 8 waves), warps per
SM on Hopper (64 K registers, granule 256 per warp, at most 64 warps, 227 KiB shared).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import triton
from triton.compiler import ASTSource

from ..errors import ZdiffError
from ..targets import GPU_TARGETS, TARGETS, get_target
from .plan import KernelModule

AOT_TARGETS = GPU_TARGETS  # the targets with a binary format


@dataclass(frozen=True)
class ResourceReport:
    kernel: str
    target: str
    arch: str
    num_warps: int
    registers: int  # VGPRs + AGPRs per lane (AMD) or registers per thread (NVIDIA)
    scalar_registers: int | None  # SGPRs (AMD)
    spills: int  # VGPRs spilled to scratch memory (AMD) or local-memory bytes per thread (NVIDIA)
    shared_bytes: int  # LDS / shared memory per workgroup / block
    matrix_instructions: bool  # MFMA (AMD) or wgmma / mma (NVIDIA) in the assembly
    occupancy: int  # waves per SIMD (AMD) or warps per SM (NVIDIA)
    binary_bytes: int
    scalar_spills: int = 0  # AMD: SGPRs spilled into VGPR lanes (v_writelane; no memory traffic)
    scratch_bytes: int = 0  # AMD: private segment (scratch memory) per lane; NVIDIA: stack bytes

    def to_dict(self) -> dict:
        return asdict(self)


def as_jit(kernel):
    """The JITFunction behind a kernel, also when TRITON_INTERPRET=1 wrapped it for the CPU."""
    if isinstance(kernel, triton.runtime.jit.JITFunction):
        return kernel
    return triton.runtime.jit.JITFunction(kernel.fn)


def aot_signature(kernel, pointer: str, **types: str) -> dict:
    """The AOT signature of a kernel, derived from its own parameters: `tl.constexpr` parameters are
    "constexpr", those named in `types` get that type ("i32", "fp32", "*fp32", ...), every other one is a
    tensor of the module's element type `pointer` ("*bf16", ...). Adding a kernel argument needs no edit here
    unless its type is not the default."""
    params = as_jit(kernel).params
    unknown = set(types) - {p.name for p in params}
    assert not unknown, f"{kernel}: no parameter(s) {sorted(unknown)}"
    return {p.name: "constexpr" if p.is_constexpr else types.get(p.name, pointer) for p in params}


def aot_entry(kernel, pointer: str, fixed: dict, **types: str) -> tuple:
    """One entry of a generated module's AOT table: (kernel, its derived signature, fixed constexprs)."""
    return kernel, aot_signature(kernel, pointer, **types), fixed


def compile_for_target(kernel, signature: dict, constexprs: dict, target: str, num_warps: int = 4,
                       num_stages: int = 2, **options):
    """(compiled kernel, ResourceReport) for a target name of AOT_TARGETS."""
    gpu = get_target(target, gpu=True).gpu_target
    jit = as_jit(kernel)
    # the JIT marks 16-byte-aligned pointers (every torch allocation) at launch; without the same
    # hint AOT code loads 2 bytes at a time and reports worse registers than the real kernel
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(jit.arg_names)
               if str(signature.get(name, "")).startswith("*")}
    source = ASTSource(jit, signature, constexprs=constexprs, attrs=aligned)
    compiled = triton.compile(source, target=gpu, options={"num_warps": num_warps, "num_stages": num_stages, **options})
    if gpu.backend == "hip":
        report = _amd_report(jit.__name__, target, gpu, num_warps, compiled)
    else:
        report = _cuda_report(jit.__name__, target, gpu, num_warps, compiled)
    return compiled, report


def compile_entry(module: KernelModule, kernel_name: str, target: str, config: dict | None = None):
    """AOT-compile one entry point of a generated module with a launch config (default: its CONFIGS entry).

    The config's constexprs join the entry's fixed ones; AMD-only options are kept for hip
    targets only. Returns (compiled, ResourceReport)."""
    from .launch import split_config

    kernel, signature, constexprs = module.AOT[kernel_name]
    tunables, options = split_config(module.CONFIGS[kernel_name] if config is None else config)
    accepted = get_target(target, gpu=True).launch_options
    options = {k: v for k, v in options.items() if k in accepted}
    options.setdefault("num_warps", 4)
    options.setdefault("num_stages", 2)
    return compile_for_target(kernel, signature, {**constexprs, **tunables}, target, **options)


def _meta(asm: str, key: str) -> int:
    match = re.search(re.escape(key) + r":\s+(\d+)", asm)
    return int(match.group(1)) if match else 0


def _amd_report(name, target, gpu, num_warps, compiled) -> ResourceReport:
    asm = compiled.asm["amdgcn"]
    vgprs = _meta(asm, ".vgpr_count") + _meta(asm, ".agpr_count")
    lds = max(_meta(asm, ".group_segment_fixed_size"), compiled.metadata.shared)
    waves = min(8, 512 // max(8, -(-vgprs // 8) * 8))
    if lds:
        waves_per_cu_by_lds = (TARGETS[target].shared_bytes // lds) * num_warps  # 4 SIMDs per CU share the LDS
        waves = min(waves, max(0, waves_per_cu_by_lds // 4))
    return ResourceReport(name, target, gpu.arch, num_warps, vgprs, _meta(asm, ".sgpr_count"),
                          _meta(asm, ".vgpr_spill_count"), lds, bool(re.search(r"\bv_mfma", asm)), waves,
                          len(compiled.asm["hsaco"]), scalar_spills=_meta(asm, ".sgpr_spill_count"),
                          scratch_bytes=_meta(asm, ".private_segment_fixed_size"))


def _cuda_report(name, target, gpu, num_warps, compiled) -> ResourceReport:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    local = int(re.search(r"LOCAL:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    shared = max(int(re.search(r"SHARED:(\d+)", usage).group(1)), compiled.metadata.shared)
    per_warp = -(-regs * 32 // 256) * 256
    blocks = 65536 // max(per_warp * num_warps, 1)
    if shared:
        blocks = min(blocks, TARGETS[target].shared_bytes // shared)
    warps = min(64, blocks * num_warps)
    ptx = compiled.asm["ptx"]
    return ResourceReport(name, target, f"sm_{gpu.arch}", num_warps, regs, None, local, shared,
                          bool(re.search(r"\b(wgmma|mma)\.", ptx)), warps, len(compiled.asm["cubin"]),
                          scratch_bytes=stack)


def check_fits(report: ResourceReport, config: str) -> None:
    """A config that spills to memory or exceeds LDS / shared memory is an error naming kernel, config and resource.

    AMD SGPR spills land in VGPR lanes (no memory traffic) and are reported, not refused."""
    if report.spills or report.scratch_bytes:
        raise ZdiffError(f"{report.kernel} [{config}] spills {report.spills} registers "
                         f"({report.scratch_bytes} bytes of scratch per thread) on {report.target} ({report.arch})")
    limit = TARGETS[report.target].shared_bytes
    if report.shared_bytes > limit:
        raise ZdiffError(f"{report.kernel} [{config}] needs {report.shared_bytes} bytes of LDS/shared memory on "
                         f"{report.target} ({report.arch}), the limit is {limit}")
