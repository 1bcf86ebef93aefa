"""Every misused number or flag ends in one line and exit 2 before any work starts."""

import json
import subprocess
import sys

import pytest
from cli_helpers import assert_error, run_main

from conftest import REPO
from zdiff import limits

TRAIN = ["train", "zaya1-tiny", "--mode", "ar", "--steps", "1", "--out", "/nonexistent/never-written"]
GEN = ["generate", "/nonexistent/ck", "--prompt", "x"]

CASES = [
    (TRAIN + ["--lr", "nan"], "--lr must be a finite number, got 'nan'"),
    (TRAIN + ["--lr", "inf"], "--lr must be a finite number, got 'inf'"),
    (TRAIN + ["--lr", "0"], "--lr must be positive, got 0"),
    (TRAIN + ["--weight-decay", "-1"], "--weight-decay must not be negative, got -1"),
    (TRAIN + ["--warmup", "-5"], "--warmup must not be negative, got -5"),
    (TRAIN + ["--min-lr-ratio", "-1"], "--min-lr-ratio must not be negative, got -1"),
    (TRAIN + ["--clip", "-1"], "--clip must be positive, got -1"),
    (TRAIN + ["--eval-every", "-1"], "--eval-every must not be negative, got -1"),
    (TRAIN + ["--seq-len", "1e9"], "--seq-len must be an integer, got '1e9'"),
    (TRAIN + ["--seq-len", str(limits.MAX_SEQ_LEN + 1)],
     f"--seq-len must be at most {limits.MAX_SEQ_LEN}, got {limits.MAX_SEQ_LEN + 1}"),
    (TRAIN + ["--batch-size", "1000000000"], f"--batch-size must be at most {limits.MAX_BATCH_SIZE}, got 1000000000"),
    (TRAIN + ["--seed", "-1"], "--seed must not be negative, got -1"),
    (GEN + ["--top-k", "-1"], "--top-k must not be negative, got -1"),
    (GEN + ["--top-p", "0"], "--top-p must be positive, got 0"),
    (GEN + ["--top-p", "1.5"], "--top-p must be at most 1, got 1.5"),
    (GEN + ["--top-p", "nan"], "--top-p must be a finite number, got 'nan'"),
    (GEN + ["--temperature", "nan"], "--temperature must be a finite number, got 'nan'"),
    (GEN + ["--temperature", "-1"], "--temperature must not be negative, got -1"),  # 0 is greedy (test_cli_flags)
    (GEN + ["--max-new-tokens", "1000000000000"],
     f"--max-new-tokens must be at most {limits.MAX_NEW_TOKENS}, got 1000000000000"),
    (GEN + ["--prompt", "y" * (limits.MAX_PROMPT_CHARS + 1)], f"at most {limits.MAX_PROMPT_CHARS}"),
    (GEN + ["--sampler", "greedy", "--mix-weight", "0.5"],
     "--mix-weight only applies to --sampler logit_mix (the sampler is greedy)"),
    (["autotune", "zaya1-tiny", "--target", "tpu"], "--target must be one of mi300x, mi355x, h100, h200, got 'tpu'"),
    (["autotune", "zaya1-tiny", "--target", "h200", "--budget", "nan"], "--budget must be a finite number, got 'nan'"),
    (["autotune", "zaya1-tiny", "--target", "h200", "--budget", "-3"], "--budget must be positive, got -3"),
    (["compile", "zaya1-tiny", "--target", "tpu"],
     "--target must be one of mi300x, mi355x, h100, h200, cpu, got 'tpu'"),
    (["cost", "zaya1-tiny", "--target", "h200", "--batch", "0"], "--batch must be at least 1, got 0"),
    (["check", "zaya1-tiny", "--context", "-1"], "--context must not be negative, got -1"),
    (["check"], "the following arguments are required: spec"),
    (["frobnicate"],
     "COMMAND must be one of check, import, export, compile, train, tokenize, generate, chat, eval, serve, cost, "
     "autotune, demo, got 'frobnicate'"),
    (["demo", "--ar-steps", "0"], "--ar-steps must be at least 1, got 0"),
]


@pytest.mark.parametrize("argv,fragment", CASES, ids=[" ".join(a[:1] + a[-2:])[:60] for a, _ in CASES])
def test_bad_numbers_and_flags_are_one_line(argv, fragment):
    code, out, err = run_main(argv, seconds=20)
    assert_error(code, err, fragment)
    assert out == ""


def test_mix_weight_with_the_spec_sampler_not_logit_mix(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "spec.yaml").write_text((REPO / "examples/specs/zaya1-tiny.yaml").read_text())  # sampler: lossless
    code, _, err = run_main(["generate", ck, "--prompt", "x", "--mix-weight", "0.3"], seconds=20)
    assert_error(code, err, "--mix-weight only applies to --sampler logit_mix (the sampler is lossless)")


@pytest.mark.parametrize("payload", ["[Infinity, 1]", "[1e308, 1e308]", "[NaN]", "[true, 1]"])
def test_cost_acceptance_must_be_finite_counts(tmp_path, payload):
    path = tmp_path / "acc.json"
    path.write_text(payload)
    code, _, err = run_main(["cost", "zaya1-tiny", "--target", "h200", "--acceptance", path], seconds=60)
    assert_error(code, err, "must hold a non-empty list of finite, non-negative counts")


def test_non_utf8_argv_is_one_line():
    env_path = str(REPO)
    result = subprocess.run([sys.executable, "-m", "zdiff", "generate", "ck", "--prompt", b"caf\xe9"],
                            capture_output=True, timeout=120, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.strip().splitlines() == ["zdiff: error: argument 4 is not valid UTF-8: 'caf\\xe9'"]


def test_train_out_must_not_be_its_init_or_data(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "marker").write_text("keep")
    code, _, err = run_main(["train", "zaya1-tiny", "--mode", "ar", "--steps", "1", "--init", ck, "--out", ck], 20)
    assert_error(code, err, f"output {ck} is the input {ck}")
    corpus = tmp_path / "run" / "corpus.txt"
    corpus.parent.mkdir()
    corpus.write_text("hello " * 100)
    code, _, err = run_main(["train", "zaya1-tiny", "--mode", "ar", "--steps", "1", "--data", corpus,
                             "--out", tmp_path / "run"], 20)
    assert_error(code, err, "contains the input")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "run"] and (ck / "marker").read_text() == "keep"


def test_second_train_into_a_locked_run_directory_is_refused(tmp_path):
    from zdiff.outputs import output_lock

    with output_lock(tmp_path / "run"):
        code, _, err = run_main(["train", "zaya1-tiny", "--mode", "ar", "--steps", "1", "--out", tmp_path / "run"], 20)
    assert_error(code, err, "is being written by another zdiff run")
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == "[]"  # the lock file went with the lock
