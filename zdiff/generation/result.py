"""What a decode returns, from the engine (`zdiff.generate`) and the reference loop alike."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # new tokens per prompt
    accepted: list[list[int]]  # accepted drafts per step, per prompt
    forward_passes: list[int]
    seconds: float
    mode: str
    block_size: int
    engine: dict = field(default_factory=dict)  # engine statistics (steps, graph replays, proposal policy)
    texts: list[str] | None = None  # the new tokens decoded, when the prompts were text

    @property
    def total_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def tokens_per_forward(self) -> float:
        return self.total_tokens / max(1, sum(self.forward_passes))

    @property
    def tokens_per_second(self) -> float:
        return self.total_tokens / self.seconds if self.seconds > 0 else float("inf")

    def histogram(self) -> list[int]:
        """How many decode steps committed 1, 2, ..., block_size tokens (accepted drafts + 1)."""
        counts = [0] * self.block_size
        for steps in self.accepted:
            for n in steps:
                counts[n] += 1
        return counts

    def summary(self) -> dict:
        # forward_passes: decode steps summed over requests (T/NFE's denominator; prefill not counted)
        return {"mode": self.mode, "tokens": self.total_tokens, "forward_passes": sum(self.forward_passes),
                "tokens_per_forward": self.tokens_per_forward, "tokens_per_s": self.tokens_per_second,
                "seconds": self.seconds, "tokens_per_step_histogram": self.histogram(),
                **({"engine": self.engine} if self.engine else {})}
