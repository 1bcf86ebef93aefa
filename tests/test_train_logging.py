"""What a run logs: per-source token counts of a mixture in metrics.jsonl, and the same scalars as TensorBoard
events (optional extra) with a clear message when the package is missing."""

import json
import sys

import pytest
from cli_helpers import assert_error, run_main

from training_helpers import micro_corpus, micro_spec
from zdiff.train.data import Tokenizer, split_corpus

FAST = ["--batch-size", "4", "--seq-len", "24", "--warmup", "1", "--eval-windows", "2", "--checkpoint-every", "3"]


def test_a_mixture_run_logs_tokens_per_source_and_tensorboard_events(tmp_path, monkeypatch):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    monkeypatch.setenv("ZDIFF_CACHE", str(tmp_path / "cache"))
    spec, corpus = micro_spec(tmp_path), micro_corpus(tmp_path, files=4)
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "page.txt").write_text("<p>hello web</p>\n" * 400)
    data = f"{corpus}:0.6,{tmp_path / 'web'}:0.4"
    code, _, err = run_main(["train", spec, "--data", data, "--mode", "ar", "--steps", "3", "--out", tmp_path / "run",
                             "--tensorboard", *FAST], 300)
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    mixture, _ = split_corpus(data, Tokenizer(None, 264))
    running = {str(corpus): 0, str(tmp_path / "web"): 0}
    for step, record in enumerate(steps):
        for name, rows in mixture.rows_per_source(0, step, 4, 25).items():
            running[name] += rows * 24
        assert record["tokens_by_source"] == running
    assert sum(running.values()) == 3 * 4 * 24 and all(running.values())

    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in steps])
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3]
    assert events.Scalars("eval/heldout_ar_nats")[-1].value == pytest.approx(records[-1]["heldout_ar_nats"])
    assert events.Scalars(f"data/tokens/{tmp_path / 'web'}")[-1].value == running[str(tmp_path / "web")]


def test_tensorboard_missing_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    code, _, err = run_main(["train", micro_spec(tmp_path), "--mode", "ar", "--steps", "1", "--out", tmp_path / "run",
                             "--tensorboard"], 60)
    assert_error(code, err, "--tensorboard needs the tensorboard package: pip install 'zdiff[tensorboard]'")
    assert not (tmp_path / "run").exists()
