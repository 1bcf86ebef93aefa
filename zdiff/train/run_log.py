"""What a run logs besides metrics.jsonl: TensorBoard event files (optional, zdiff[tensorboard]) and the model
FLOP utilisation of a step where the device's peak rate is known (a GPU of zdiff.targets; never on a CPU)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ZdiffError
from ..spec.counts import count_model

TRAIN_SCALARS = ("loss", "ar_loss", "diffusion_loss", "distill_loss", "lr", "grad_norm", "tokens_per_s", "mfu")


def step_flops(spec, mode: str, batch_size: int, seq_len: int) -> float:
    """Model FLOPs of one step (forward + backward = 3x the forward): 2 per active weight and LM-head entry per
    row; TiDAR trains on 2 rows per token (the clean and the masked copy). Attention scores are left out."""
    counts = count_model(spec.model)
    rows = batch_size * seq_len * (2 if mode == "tidar" else 1)
    return 3 * rows * 2 * (counts.active_params + spec.model.vocab_size * spec.model.hidden_size)


def peak_flops(device, world: int) -> float | None:
    """Datasheet dense bf16 FLOP/s of all ranks, or None where it is not known (the CPU)."""
    if device.type != "cuda":
        return None
    from ..targets import device_target

    return device_target(device).nominal_tflops * 1e12 * world or None


def require_tensorboard():
    """SummaryWriter, or the error that says how to get it (checked before a run starts)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ZdiffError("--tensorboard needs the tensorboard package: pip install 'zdiff[tensorboard]' "
                         "(or leave --tensorboard out; metrics.jsonl and loss.png are always written)") from None
    return SummaryWriter


class TensorBoardLog:
    """Scalars of each metrics.jsonl record as TensorBoard events in RUN/tensorboard."""

    def __init__(self, run_root: Path):
        self.writer = require_tensorboard()(log_dir=str(run_root / "tensorboard"))

    def write(self, record: dict) -> None:
        step = record["step"]
        for key, value in record.items():
            if key == "step" or value is None:
                continue
            if key == "tokens_by_source":
                for source, tokens in value.items():
                    self.writer.add_scalar(f"data/tokens/{source}", tokens, step)
            elif isinstance(value, (int, float)):
                self.writer.add_scalar(f"{'train' if key in TRAIN_SCALARS else 'eval'}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
