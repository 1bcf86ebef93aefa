"""benchmarks/acceptance_bench.py on a micro checkpoint: the report's structure, and its numbers recounted
independently from the per-request results it carries; seeded decoding is bit-identical across processes."""

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from conftest import REPO
from training_helpers import micro_corpus, micro_spec
from zdiff import plots
from zdiff.errors import ZdiffError
from zdiff.train import TrainConfig, train

BLOCK = 4  # the micro spec's block size
ARGS = ["--prompts", "6", "--prompt-tokens", "8", "--new-tokens", "12", "--eval-windows", "2", "--seq-len", "16",
        "--mix-weights", "0.25", "0.5", "--threads", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("acceptance")
    corpus = micro_corpus(tmp)
    config = TrainConfig(spec=str(micro_spec(tmp)), data=str(corpus), mode="tidar", steps=4, out=str(tmp / "run"),
                         batch_size=4, seq_len=16, eval_windows=2, warmup=1, threads=1)
    summary = train(config, log=lambda *a: None)
    return tmp / "run" / "final", corpus, summary


def _bench(checkpoint, corpus, out, omp="1", extra=()):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=omp, MKL_NUM_THREADS=omp)
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "acceptance_bench.py"), str(checkpoint),
                             "--data", str(corpus), "--out", str(out), *ARGS, *extra],
                            capture_output=True, text=True, env=env, timeout=600)
    return result


def _recount(requests, block):
    """Independent counts from the per-request lists: tokens, steps, histogram, reach by position."""
    tokens = sum(len(r["new_tokens"]) for r in requests)
    steps = sum(r["decode_steps"] for r in requests)
    accepted = [a for r in requests for a in r["accepted"]]
    counts = Counter(accepted)
    histogram = [counts.get(n, 0) for n in range(block)]
    reach = [sum(a >= j for a in accepted) / len(accepted) for j in range(1, block)]
    return tokens, steps, histogram, reach


def test_report_structure_and_numbers_match_an_independent_count(checkpoint, tmp_path):
    ckpt, corpus, summary = checkpoint
    result = _bench(ckpt, corpus, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "acceptance.json").read_text())
    assert list(report["samplers"]) == ["ar", "lossless", "logit_mix_0.25", "logit_mix_0.5", "greedy"]
    assert report["block_size"] == BLOCK and report["threads"] == 1 and report["plan"]["prompts"] == 6
    # the same held-out windows and objective as the trainer's final evaluation
    assert report["heldout_ar_bits_per_byte"] == pytest.approx(summary["heldout_ar_bits_per_byte"], rel=1e-6)
    for name, r in report["samplers"].items():
        block = 1 if name == "ar" else BLOCK
        requests = r["requests"]
        assert len(requests) == 6
        assert all(0 < len(q["new_tokens"]) <= 12 and len(q["accepted"]) == q["decode_steps"] for q in requests), name
        tokens, steps, histogram, reach = _recount(requests, block)
        assert (r["tokens"], r["decode_steps"]) == (tokens, steps), name
        assert r["tokens_per_forward"] == pytest.approx(tokens / steps, rel=1e-12), name
        # every committed token is one step's own token or an accepted draft
        assert tokens == steps + sum(n * c for n, c in enumerate(histogram)), name
        assert r["accepted_length_histogram"] == histogram, name
        assert r["acceptance_by_position"] == pytest.approx(reach, rel=1e-12), name
        lo, hi = r["tokens_per_forward_ci95"]
        assert lo <= r["tokens_per_forward"] <= hi, name
        assert len(r["acceptance_by_position_ci95"]) == block - 1
        for value, (lo, hi) in zip(r["acceptance_by_position"], r["acceptance_by_position_ci95"]):
            assert 0 <= lo <= value <= hi <= 1, name
        conditional = r["conditional_acceptance_by_position"]
        for j in range(block - 1):  # reach_j = reach_{j-1} * conditional_j
            assert reach[j] == pytest.approx((reach[j - 1] if j else 1.0) * conditional[j], abs=1e-12), name
    assert report["samplers"]["ar"]["tokens_per_forward"] == 1.0
    assert report["samplers"]["logit_mix_0.5"]["mix_weight"] == 0.5
    assert math.isfinite(report["heldout_ar_bits_per_byte"])
    assert (tmp_path / "acceptance.md").read_text().count("\n| ") == 6  # header + 5 samplers
    assert (tmp_path / "acceptance_by_position.png").is_file() == plots.available()


def test_seeded_decoding_is_bit_identical_across_processes(checkpoint, tmp_path):
    ckpt, corpus, _ = checkpoint
    reports = []
    for omp in ("1", "2"):
        result = _bench(ckpt, corpus, tmp_path / omp, omp=omp, extra=("--seed", "7"))
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads((tmp_path / omp / "acceptance.json").read_text())
        for r in report["samplers"].values():
            r.pop("seconds")
        reports.append(report)
    assert reports[0]["samplers"] == reports[1]["samplers"]
    assert reports[0]["heldout_ar_bits_per_byte"] == reports[1]["heldout_ar_bits_per_byte"]


def test_bad_settings_are_one_line_errors(checkpoint, tmp_path):
    ckpt, corpus, _ = checkpoint
    result = _bench(ckpt, corpus, tmp_path, extra=("--mix-weights", "1.5"))
    assert result.returncode == 2 and result.stderr.strip() == ("error: --mix-weights: each weight must be in "
                                                                "[0, 1], got 1.5")
    ar_only = tmp_path / "ar-only"
    shutil.copytree(ckpt, ar_only)
    spec = ar_only / "spec.yaml"
    spec.write_text(spec.read_text().replace("mask_token_id: 258", "mask_token_id: null"))
    result = _bench(ar_only, corpus, tmp_path)
    assert result.returncode == 2 and result.stderr.strip().startswith(f"error: {ar_only}: an AR checkpoint")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "acceptance.json").exists()


def test_decoding_with_other_acceptance_levels(checkpoint, tmp_path):
    """--acceptance-levels replaces the checkpoint's proposal levels for decoding (the micro spec's are 0 2)."""
    ckpt, corpus, _ = checkpoint
    reports = {}
    for name, extra in (("own", ()), ("all", ("--acceptance-levels", "0", "1", "2", "3"))):
        result = _bench(ckpt, corpus, tmp_path / name, extra=extra)
        assert result.returncode == 0, result.stderr[-3000:]
        reports[name] = json.loads((tmp_path / name / "acceptance.json").read_text())
    own, every = reports["own"], reports["all"]
    assert (own["proposals"], own["acceptance_levels"]) == (2, [0, 2]) and "acceptance_levels" not in own["plan"]
    assert (every["proposals"], every["acceptance_levels"]) == (4, [0, 1, 2, 3])
    assert every["plan"]["acceptance_levels"] == [0, 1, 2, 3]
    # AR decoding never uses the levels; TiDAR decoding reads its next drafts from other blocks
    assert every["samplers"]["ar"]["tokens_per_forward"] == own["samplers"]["ar"]["tokens_per_forward"] == 1.0
    assert every["samplers"]["lossless"]["requests"] != own["samplers"]["lossless"]["requests"]
    bad = _bench(ckpt, corpus, tmp_path / "bad", extra=("--acceptance-levels", "0", "7"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("error: --acceptance-levels 0 7: diffusion.acceptance_levels"), bad.stderr


def test_paired_difference_recounts_and_is_tighter_than_separate_intervals():
    from zdiff.eval.acceptance import paired_difference

    gen = np.random.default_rng(3)
    steps = gen.integers(20, 60, size=40)  # prompts differ a lot; the second run saves ~10% of steps on each

    def report(step_counts):
        return {"requests": [{"new_tokens": [1] * 64, "decode_steps": int(s)} for s in step_counts]}
    faster = np.maximum(1, np.round(steps * 0.9)).astype(int)
    same = paired_difference(report(steps), report(steps))
    assert same == {"difference": 0.0, "ci95": [0.0, 0.0]}
    d = paired_difference(report(steps), report(faster))
    want = 64 * 40 / faster.sum() - 64 * 40 / steps.sum()
    assert d["difference"] == pytest.approx(want, rel=1e-12)
    lo, hi = d["ci95"]
    assert 0 < lo <= want <= hi  # every prompt got faster: the paired interval excludes 0
    with pytest.raises(ZdiffError, match="same prompts: 40 and 39 requests"):
        paired_difference(report(steps), report(steps[:-1]))


@pytest.mark.skipif(not plots.available(), reason="matplotlib is an optional extra")
def test_acceptance_plot_draws_the_perfect_drafters_curve(tmp_path, monkeypatch):
    drawn = {}

    def keep(plt, fig, ax, path, title):
        drawn["lines"] = [(line.get_label(), list(line.get_ydata())) for line in ax.get_lines()]
        plt.close(fig)
        return True
    monkeypatch.setattr(plots, "_finish", keep)
    report = {"acceptance_by_position": [0.5, 0.3, 0.1], "tokens_per_forward": 1.9,
              "acceptance_by_position_ci95": [[0.45, 0.55], [0.25, 0.35], [0.05, 0.15]]}
    assert plots.acceptance_by_position({"lossless": report}, tmp_path / "a.png", "t", ceiling=0.6)
    (ceiling,) = [y for label, y in drawn["lines"] if label.startswith("perfect drafter")]
    assert ceiling == pytest.approx([0.6, 0.36, 0.216])
