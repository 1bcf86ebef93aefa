"""The cost model's view of the targets: the registry itself lives in `zdiff.targets` (one place)."""

from ..targets import TARGETS, Target, target_rates

TargetRates = Target  # the cost model reads a Target's rates

__all__ = ["TARGETS", "Target", "TargetRates", "target_rates"]
