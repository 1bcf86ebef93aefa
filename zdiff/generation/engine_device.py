"""Where the engine runs: the device it may use, its free memory, and the card the step policy plans for."""

from __future__ import annotations

import os

import torch

from ..errors import ZdiffError

CPU_POLICY_TARGET = "h200"  # the cost model needs a card; on the CPU the policy plans for an H200


def _engine_device(model_device: torch.device, asked) -> torch.device:
    """The device the engine runs on: the model's, or `asked` if it names the same kind of device."""
    device = model_device if asked is None else resolve_device(asked)
    if device.type != model_device.type:
        raise ZdiffError(f"device: the model's weights are on {model_device}, the engine was asked to run on "
                         f"{device}; move the model first (model.to(device))")
    return device


def resolve_device(asked) -> torch.device:
    """A device the engine can run on, or one line saying why not."""
    try:
        device = torch.device(asked)
    except (RuntimeError, TypeError, ValueError):
        raise ZdiffError(f"device: not a torch device, got {asked!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ZdiffError(f"device: the engine runs on cpu or cuda (ROCm included), got {str(device)!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ZdiffError(f"device: {str(device)!r} asked for, but this torch sees no CUDA or ROCm GPU "
                         f"(torch {torch.__version__}); use device='cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ZdiffError(f"device: {str(device)!r} asked for, but this torch sees {torch.cuda.device_count()} GPU(s), "
                         f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def _free_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _runtime_target(device: torch.device) -> str:
    if device.type != "cuda":
        return CPU_POLICY_TARGET
    from ..targets import device_target

    return device_target(device).name
