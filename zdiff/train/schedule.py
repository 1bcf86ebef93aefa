"""Linear warmup, then cosine decay to min_ratio * peak."""

import math


def learning_rate(step: int, total_steps: int, peak: float, warmup: int, min_ratio: float = 0.1) -> float:
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
