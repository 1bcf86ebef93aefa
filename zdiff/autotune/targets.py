"""Peak rates and on-chip limits of the GPU targets (../shared/DESIGN.md, "Targets").

The cost model needs *achievable* rates, not datasheet ones. One H200 was measured (4.17 TB/s
device copy, ~745 TFLOP/s bf16 matmul); the other cards use their nominal figures derated by
the same ratios as the H200 (copy 4.17 / 4.8 = 0.869, matmul 745 / 989 = 0.753). That keeps
every card's ridge point (FLOP per byte where a forward turns compute bound) at its datasheet
ratio times 0.867, and it is an assumption: measured MI300X / MI355X matmul efficiency is
often lower than the H200's, which would move their ridge (and the recommended proposals
per pass) down. Replace `measured_*` when a card is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ZdiffError

H200_COPY_DERATE = 4.17 / 4.8
H200_MATMUL_DERATE = 745.0 / 989.0


@dataclass(frozen=True)
class TargetRates:
    name: str
    arch: str  # gfx942 / gfx950 / sm_90
    compute_units: int  # CUs (AMD) or SMs (NVIDIA)
    shared_bytes: int  # LDS / shared memory per workgroup
    nominal_tflops: float  # dense bf16, datasheet
    nominal_tbps: float  # HBM, datasheet
    measured_tflops: float | None = None  # sustained bf16 matmul on a real card
    measured_tbps: float | None = None  # sustained device copy on a real card
    device_names: tuple[str, ...] = ()  # substrings of torch.cuda.get_device_name() for this card

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


TARGETS: dict[str, TargetRates] = {
    "mi300x": TargetRates("mi300x", "gfx942", 304, 64 * 1024, 1307.0, 5.3, device_names=("MI300X", "MI300")),
    "mi355x": TargetRates("mi355x", "gfx950", 256, 160 * 1024, 2500.0, 8.0, device_names=("MI355X", "MI355", "MI350")),
    "h100": TargetRates("h100", "sm_90", 132, 227 * 1024, 989.0, 3.35, device_names=("H100",)),
    "h200": TargetRates("h200", "sm_90", 132, 227 * 1024, 989.0, 4.8, measured_tflops=745.0, measured_tbps=4.17,
                        device_names=("H200",)),
}


def target_rates(name: str) -> TargetRates:
    if name not in TARGETS:
        raise ZdiffError(f"--target must be one of {', '.join(TARGETS)}, got {name!r}")
    return TARGETS[name]
