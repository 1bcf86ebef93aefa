"""The compile targets: every fact about a card lives here (../shared/DESIGN.md, "Targets").

One `Target` per name: its Triton backend and architecture, warp / wave size, on-chip memory
per workgroup, compute units, the launch options its backend accepts, its peak rates, and the
substrings of `torch.cuda.get_device_name()` that identify it. Codegen (default configs,
static pruning), AOT (resource reports), autotune (occupancy, scores), the cost model and the
runtime (which target a torch device is) all read this table and nothing else.

Rates: the cost model needs *achievable* rates, not datasheet ones. One H200 was measured
(4.17 TB/s device copy, ~745 TFLOP/s bf16 matmul); the other cards use their nominal figures
derated by the same ratios as the H200 (copy 4.17 / 4.8 = 0.869, matmul 745 / 989 = 0.753).
That keeps every card's ridge point at its datasheet ratio times 0.867, and it is an
assumption: measured MI300X / MI355X matmul efficiency is often lower than the H200's, which
would move their ridge (and the recommended proposals per pass) down. Replace `measured_*`
when a card is measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ZdiffError

H200_COPY_DERATE = 4.17 / 4.8
H200_MATMUL_DERATE = 745.0 / 989.0
AMD_OPTIONS = ("waves_per_eu", "matrix_instr_nonkdim", "kpack")  # launch options only ROCm accepts


@dataclass(frozen=True)
class Target:
    name: str
    backend: str  # Triton backend: hip | cuda | cpu (the interpreter)
    arch: str  # gfx942 / gfx950 / sm_90 / cpu
    warp_size: int  # lanes per warp (NVIDIA) or wave (AMD)
    compute_units: int  # CUs (AMD) or SMs (NVIDIA)
    shared_bytes: int  # LDS / shared memory per workgroup
    nominal_tflops: float  # dense bf16, datasheet
    nominal_tbps: float  # HBM, datasheet
    measured_tflops: float | None = None  # sustained bf16 matmul on a real card
    measured_tbps: float | None = None  # sustained device copy on a real card
    device_names: tuple[str, ...] = ()  # substrings of torch.cuda.get_device_name() for this card
    max_warps: int = 16  # largest num_warps a workgroup may have (16 wave64s would be 1024 lanes)
    kpacks: tuple[int, ...] = ()  # AMD: the kpack values the MFMA lowering accepts (gfx950: 1 only)

    @property
    def is_amd(self) -> bool:
        return self.backend == "hip"

    @property
    def is_gpu(self) -> bool:
        return self.backend != "cpu"

    @property
    def launch_options(self) -> tuple[str, ...]:
        """Launch options the backend accepts besides the tile constexprs."""
        return ("num_warps", "num_stages", *(AMD_OPTIONS if self.is_amd else ()))

    @property
    def gpu_target(self):
        """triton's GPUTarget for ahead-of-time compilation."""
        from triton.backends.compiler import GPUTarget

        if not self.is_gpu:
            raise ZdiffError(f"target {self.name} has no GPU binary format")
        arch = int(self.arch.removeprefix("sm_")) if self.backend == "cuda" else self.arch
        return GPUTarget(self.backend, arch, self.warp_size)

    @property
    def flops_per_s(self) -> float:
        tflops = self.measured_tflops if self.measured_tflops else self.nominal_tflops * H200_MATMUL_DERATE
        return tflops * 1e12

    @property
    def bytes_per_s(self) -> float:
        tbps = self.measured_tbps if self.measured_tbps else self.nominal_tbps * H200_COPY_DERATE
        return tbps * 1e12

    @property
    def rates_source(self) -> str:
        return "measured" if self.measured_tflops and self.measured_tbps else "nominal x H200 derating"

    @property
    def ridge(self) -> float:
        """FLOP per byte at which compute time equals memory time."""
        return self.flops_per_s / self.bytes_per_s

    def matches_device_name(self, device_name: str) -> bool:
        return any(s.upper() in device_name.upper() for s in self.device_names)


TARGETS: dict[str, Target] = {
    "mi300x": Target("mi300x", "hip", "gfx942", 64, 304, 64 * 1024, 1307.0, 5.3, device_names=("MI300X", "MI300"),
                     max_warps=8, kpacks=(1, 2)),
    "mi355x": Target("mi355x", "hip", "gfx950", 64, 256, 160 * 1024, 2500.0, 8.0,
                     device_names=("MI355X", "MI355", "MI350"), max_warps=8, kpacks=(1,)),
    "h100": Target("h100", "cuda", "sm_90", 32, 132, 227 * 1024, 989.0, 3.35, device_names=("H100",)),
    "h200": Target("h200", "cuda", "sm_90", 32, 132, 227 * 1024, 989.0, 4.8, measured_tflops=745.0,
                   measured_tbps=4.17, device_names=("H200",)),
    # the Triton interpreter (TRITON_INTERPRET=1): small tiles, no binaries, no rates
    "cpu": Target("cpu", "cpu", "cpu", 32, 1, 227 * 1024, 0.0, 0.0),
}
GPU_TARGETS: tuple[str, ...] = tuple(name for name, t in TARGETS.items() if t.is_gpu)


def get_target(name: str, gpu: bool = False) -> Target:
    """The Target called `name` (gpu: only GPU targets qualify); an unknown name is a ZdiffError."""
    names = GPU_TARGETS if gpu else tuple(TARGETS)
    if name not in names:
        raise ZdiffError(f"--target must be one of {', '.join(names)}, got {name!r}")
    return TARGETS[name]


def target_rates(name: str) -> Target:
    """A GPU target, for the cost model (the interpreter has no rates)."""
    return get_target(name, gpu=True)


def device_target(device=None) -> Target:
    """The target a torch device is: cpu for CPU devices; on ROCm by architecture, on CUDA by device name
    (an unknown NVIDIA card counts as an h100, an unknown AMD one as an mi300x: same code, nearest tables)."""
    import torch

    device = torch.device(device or "cpu")
    if device.type != "cuda":
        return TARGETS["cpu"]
    if torch.version.hip:
        arch = torch.cuda.get_device_properties(device).gcnArchName
        return next((t for t in TARGETS.values() if t.is_amd and arch.startswith(t.arch)), TARGETS["mi300x"])
    name = torch.cuda.get_device_name(device)
    return next((t for t in TARGETS.values() if t.backend == "cuda" and t.matches_device_name(name)), TARGETS["h100"])


def device_matches(target: str) -> bool:
    """Is the current CUDA / ROCm device (index 0) a card of `target`?"""
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        name = torch.cuda.get_device_name(0)
    except Exception:
        return False
    return get_target(target).matches_device_name(name)


INTERPRETER_ON = ("1", "true", "on", "yes")  # the values Triton reads as "on" (any other value is off)


def triton_interpreter() -> bool:
    """Does TRITON_INTERPRET turn Triton's interpreter on, read the way Triton reads it?"""
    return os.environ.get("TRITON_INTERPRET", "").lower() in INTERPRETER_ON


def interpreter_needed(what: str) -> str:
    """The one line that refuses Triton kernels on a CPU while the interpreter is off."""
    value = os.environ.get("TRITON_INTERPRET")
    now = "it is unset" if value is None else f"TRITON_INTERPRET={value!r} leaves it off (on: 1, true, on, yes)"
    return (f"{what} on the CPU runs Triton kernels in the interpreter, and {now}: set TRITON_INTERPRET=1 "
            "(slow, for debugging) or use a GPU")


def interpreter_refused(what: str) -> str:
    """The one line that refuses real compilation while the interpreter is on."""
    return (f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')} is set, which turns Triton's interpreter on, "
            f"but {what} needs the real Triton compiler; unset it (or set it to 0)")
