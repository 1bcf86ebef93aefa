"""Prometheus metrics of one server (its own registry, so two apps in a process never collide).

Request-level counters are incremented by the HTTP handlers. Engine-level numbers are the
engine's own `stats`, copied by the worker thread after every step into a snapshot that a
custom collector reports: the engine keeps the one count of forward passes, tokens and
accepted drafts, the server never re-counts them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from ..generation.requests import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _snapshot(stats) -> dict:
    return {
        "forward_passes": stats.forward_passes,
        "tokens": stats.tokens,
        "steps": stats.steps,
        "tokens_per_step": list(stats.tokens_per_step),
        "active_slots": stats.active_slots,
        "queue_depth": stats.queue_depth,
        "max_slots": stats.max_slots,
        "proposals_used": dict(stats.proposals_used),
        "steps_used": dict(stats.steps_used),
        "step_seconds": stats.step_seconds,
    }


class _EngineCollector(Collector):
    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics

    def collect(self):
        s = self.metrics.engine
        yield CounterMetricFamily(
            "zdiff_forward_passes", "decode and prefill forward passes of the engine", value=s["forward_passes"]
        )
        yield CounterMetricFamily(
            "zdiff_generated_tokens", "tokens committed by the engine (all requests)", value=s["tokens"]
        )
        yield CounterMetricFamily("zdiff_engine_steps", "engine steps", value=s["steps"])
        yield GaugeMetricFamily(
            "zdiff_tokens_per_forward",
            "generated tokens per forward pass since start",
            value=s["tokens"] / s["forward_passes"] if s["forward_passes"] else 0.0,
        )
        counts = s["tokens_per_step"]  # index i: a request committed i + 1 tokens in a step (i drafts accepted)
        cumulative, buckets = 0, []
        for accepted, count in enumerate(counts):
            cumulative += count
            buckets.append((str(accepted), cumulative))
        buckets.append(("+Inf", cumulative))
        yield HistogramMetricFamily(
            "zdiff_accepted_drafts",
            "drafts accepted per request per decode step",
            buckets=buckets,
            sum_value=sum(i * c for i, c in enumerate(counts)),
        )
        yield GaugeMetricFamily("zdiff_queue_depth", "requests waiting for a slot", value=s["queue_depth"])
        yield GaugeMetricFamily("zdiff_active_slots", "slots decoding a request", value=s["active_slots"])
        yield GaugeMetricFamily(
            "zdiff_slot_occupancy",
            "active slots / slots",
            value=s["active_slots"] / s["max_slots"] if s["max_slots"] else 0.0,
        )
        proposals = CounterMetricFamily(
            "zdiff_proposal_steps", "engine steps by proposal blocks per pass", labels=["proposals"]
        )
        for p, steps in sorted(s["proposals_used"].items()):
            proposals.add_metric([str(p)], steps)
        yield proposals
        options = CounterMetricFamily(
            "zdiff_step_options",
            "engine steps by (proposal blocks, drafts verified, draft expert budget; 'off': none) the policy chose",
            labels=["proposals", "verify", "budget"],
        )
        for option, steps in sorted(s["steps_used"].items(), key=lambda item: item[0].label):
            options.add_metric([str(option.proposals), str(option.verify),
                                "off" if option.budget is None else str(option.budget)], steps)
        yield options


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "zdiff_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "zdiff_prompt_tokens", "prompt tokens of accepted requests", registry=self.registry
        )
        self.completion_tokens = Counter(
            "zdiff_completion_tokens", "tokens returned to clients", registry=self.registry
        )
        self.step_seconds = Histogram(
            "zdiff_step_seconds", "wall time of one engine step", buckets=STEP_BUCKETS, registry=self.registry
        )
        self.engine = _snapshot(EngineStats(max_slots=0))  # until the worker's first snapshot
        self.registry.register(_EngineCollector(self))

    def on_step(self, engine) -> None:
        """Called by the worker thread after each step (and once before the first)."""
        snapshot = _snapshot(engine.stats)
        if snapshot["steps"] > self.engine["steps"]:
            self.step_seconds.observe(snapshot["step_seconds"])
        self.engine = snapshot  # one assignment: readers see the old or the new snapshot, never a mix

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
