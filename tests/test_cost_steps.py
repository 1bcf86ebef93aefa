"""The cost model's MoE-aware TiDAR steps (zdiff cost): verify length d against a hand-solved Markov chain,
the draft-row expert budget's weight traffic by hand, the (P, d, budget) search and its policies, the routing
histogram file and its measurement, and the CLI."""

import json

import pytest
import torch

from conftest import run_cli
from zdiff.autotune import cost
from zdiff.autotune.cost import (
    CostModel,
    default_acceptance,
    expected_tokens,
    offset_outcomes,
    step_forward,
    truncated_outcomes,
)
from zdiff.autotune.routing import load_routing, routing_counts
from zdiff.errors import ZdiffError
from zdiff.runtime import build_model
from zdiff.spec import load_spec
from zdiff.targets import Target, target_rates

UNIT = Target("unit", "cuda", "sm_90", 32, 1, 1, 1e-12, 1e-12, measured_tflops=1e-12, measured_tbps=1e-12)
ACCEPT3 = [0.2, 0.3, 0.5]  # b = 3: P(0, 1, 2 drafts accepted) for an aligned block


def test_truncated_outcomes_by_hand():
    cut = truncated_outcomes(offset_outcomes(ACCEPT3), 1)
    # offset 0: one of the two drafts verified, accepted with 0.3 + 0.5; offset 1: 0.5 / 0.8 of reaching slot 2
    assert cut.flatten().tolist() == pytest.approx([0.2, 0.8, 0.0, 0.375, 0.625, 0.0, 1.0, 0.0, 0.0])


def test_expected_tokens_with_verify_length_by_hand():
    """d = 1, b = 3. Levels {0, 1}: every step is aligned, 1 + 0.8 tokens. Level {0} alone: an accepted draft
    leaves offset 1 (1.625 tokens from there), so pi = (15, 32) / 47 and 79/47 tokens per forward."""
    cut = truncated_outcomes(offset_outcomes(ACCEPT3), 1)
    assert expected_tokens(ACCEPT3, (0, 1), 3, cut) == pytest.approx(1.8, abs=1e-12)
    assert expected_tokens(ACCEPT3, (0,), 3, cut) == pytest.approx(79 / 47, abs=1e-12)
    # the full verify length is the untruncated chain
    accept = default_acceptance(8)
    full = truncated_outcomes(offset_outcomes(accept), 7)
    assert expected_tokens(accept, (0, 2, 4), 8, full) == pytest.approx(expected_tokens(accept, (0, 2, 4), 8))


def test_verify_length_by_simulation():
    """The chain against a direct simulation of per-slot acceptance with d = 3, b = 8, levels {0, 2}."""
    accept, d, levels, b = default_acceptance(8, first=0.8, decay=0.9), 3, (0, 2), 8
    gen = torch.Generator().manual_seed(0)
    offset, tokens, steps = 0, 0, 40000
    outcomes = offset_outcomes(accept)
    for _ in range(steps):
        k = int(torch.multinomial(torch.tensor(outcomes[offset]), 1, generator=gen))
        k = min(k, d, b - 1 - offset)
        tokens += k + 1
        offset = k - max(a for a in levels if a <= k)
    want = expected_tokens(accept, levels, b, truncated_outcomes(outcomes, d))
    assert tokens / steps == pytest.approx(want, abs=0.02)


def test_budget_reads_the_verify_rows_experts_plus_m_by_hand():
    """zaya1-tiny: 4 experts top-1 (uniform, the skip counted as an expert), b = 8; B = 1, P = 1, d = 2:
    11 rows. Without a budget 4(1 - (3/4)^11) experts are read per layer; with one, 4(1 - (3/4)^3) + m, at
    most 4. Compute (and every other part) is unchanged."""
    spec = load_spec("zaya1-tiny")
    model = CostModel(spec, UNIT)
    expert_bytes = 4 * 3 * 384 * 128 * 2  # one expert, all layers, bf16
    free = step_forward(model, 1, 10, 1, 2, None)
    assert free.rows == 11 and free.distinct_experts == pytest.approx(4 * (1 - 0.75 ** 11))
    for m, distinct in ((0, 4 * (1 - 0.75 ** 3)), (1, 4 * (1 - 0.75 ** 3) + 1), (2, 4.0)):
        held = step_forward(model, 1, 10, 1, 2, m)
        assert held.distinct_experts == pytest.approx(distinct)
        assert held.parts["experts"].bytes == pytest.approx(distinct * expert_bytes)
        assert held.parts["experts"].flops == free.parts["experts"].flops
        assert {k: v for k, v in held.parts.items() if k != "experts"} == \
            {k: v for k, v in free.parts.items() if k != "experts"}
    assert step_forward(model, 1, 10, 0, 2, 0).rows == 1  # P = 0 is the AR step


def test_policies_on_zaya1_8b():
    """Each policy is at least as good as the one before (it searches a superset); at batch 1 on MI300X only the
    budget beats AR, and at batch 32 choosing d beats verifying every draft."""
    spec = load_spec("examples/specs/zaya1-8b.yaml")
    model = CostModel(spec, target_rates("mi300x"))
    accept = default_acceptance(16)
    one = cost.step_report(model, 1, 4096, accept, 4)
    speedups = [one[p]["speedup"] for p in ("AR", "TiDAR today", "TiDAR + d", "TiDAR + d + budget")]
    assert speedups == sorted(speedups) and speedups[0] == 1.0
    assert one["TiDAR today"]["P"] == 0 and one["TiDAR + d + budget"]["budget"] is not None
    assert one["TiDAR + d + budget"]["speedup"] > 1.5
    big = cost.step_report(model, 32, 4096, accept, 4)
    assert big["TiDAR today"]["verify"] == 15 and big["TiDAR + d"]["verify"] < 15
    assert big["TiDAR + d"]["speedup"] > big["TiDAR today"]["speedup"]
    # the search is exhaustive over d and budgets: nothing in the table beats the chosen step
    rows = cost.step_table(model, 1, 4096, accept, 4)
    assert max(r.speedup for r in rows) <= one["TiDAR + d + budget"]["speedup"] * 1.01 + 1e-12
    assert {r.budget for r in rows} == set(cost.BUDGET_CHOICES) and {r.verify for r in rows if r.proposals} == \
        set(range(1, 16))


def test_routing_histogram_measured_from_a_model(tmp_path):
    spec = load_spec("zaya1-tiny-moe16")
    model = build_model(spec.model, seed=0).eval()
    ids = torch.randint(0, 256, (70,), generator=torch.Generator().manual_seed(0)).tolist()
    counts = routing_counts(model, ids, chunk=32)  # three chunks, the last one ragged
    assert counts.shape == (4, 17) and counts.sum(1).tolist() == [70.0] * 4
    with torch.no_grad():
        out = model(torch.tensor([ids[:32]]), return_routings=True)
    first = routing_counts(model, ids[:32], chunk=32)
    assert first[2].tolist() == torch.bincount(out.routings[2].experts.flatten(), minlength=17).double().tolist()
    path = tmp_path / "routing.json"
    path.write_text(json.dumps({"histogram": counts.sum(0).tolist()}))
    assert load_routing(path, 16) == counts.sum(0).tolist()
    for bad in ("[1, 2]", "{}", "[-1" + ", 1" * 16 + "]", "nope"):
        path.write_text(bad)
        with pytest.raises(ZdiffError, match="--routing"):
            load_routing(path, 16)


def test_cli_cost_prints_the_best_step_per_policy(tmp_path):
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps([100] + [1] * 15 + [50]))  # one hot expert and the skip class
    out = run_cli("cost", "examples/specs/zaya1-8b.yaml", "--target", "mi300x", "--max-proposals", "3", "--json",
                  "--routing", str(routing))
    assert out.returncode == 0, out.stderr
    steps = json.loads(out.stdout)["steps"]
    assert list(steps) == ["AR", "TiDAR today", "TiDAR + d", "TiDAR + d + budget"]
    uniform = json.loads(run_cli("cost", "examples/specs/zaya1-8b.yaml", "--target", "mi300x", "--max-proposals",
                                 "3", "--json").stdout)["steps"]
    # skewed routing touches fewer experts: the budgeted step reads less than under uniform routing
    assert steps["TiDAR + d + budget"]["speedup"] > uniform["TiDAR + d + budget"]["speedup"]
    text = run_cli("cost", "zaya1-tiny", "--target", "h200", "--max-proposals", "2")
    assert "best per policy" in text.stdout and "TiDAR + d + budget" in text.stdout
    bad = run_cli("cost", "zaya1-tiny", "--target", "h200", "--routing", str(tmp_path / "missing.json"))
    assert bad.returncode == 2 and "--routing: no such file" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_projection_script(tmp_path):
    """benchmarks/moe_projection.py: every (target, batch, policy) row, the markdown table and (when matplotlib
    is installed) the plot; each policy at least as fast as the one before it."""
    import os
    import subprocess
    import sys

    from conftest import REPO
    from zdiff import plots

    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "moe_projection.py"), "--max-proposals", "3",
                             "--out", str(tmp_path), "--plot", str(tmp_path / "plot.png")],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert len(rows) == 3 * 4 * 4
    for target in ("mi300x", "mi355x", "h200"):
        for batch in (1, 4, 8, 32):
            mine = [r["speedup"] for r in rows if r["target"] == target and r["batch"] == batch]
            assert mine == sorted(mine) and mine[0] == 1.0
    text = (tmp_path / "results.md").read_text()
    # every row, a blank line, then one summary line per (target, batch) with each policy's choice
    assert text.count("\n") == len(rows) + 2 + 1 + 3 * 4 + 2
    assert "| mi300x | 1 | " in text.split("\n\n")[1]
    assert (tmp_path / "plot.png").is_file() == plots.available()
