"""`zdiff chat`: turns rendered and streamed from the engine, /commands between turns, errors that keep the
session alive."""

import subprocess
import sys

import pytest

import zdiff
from conftest import REPO
from zdiff.checkpoint.store import save_checkpoint
from zdiff.runtime import build_model
from zdiff.sampler import SamplingParams
from zdiff.spec import load_spec
from zdiff.tokenize import ByteTokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    spec = load_spec("zaya1-tiny")
    return save_checkpoint(build_model(spec.model, seed=2), spec, tmp_path_factory.mktemp("chat") / "ck")


def _chat(checkpoint, lines: list[str], *flags):
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "zdiff", "chat", str(checkpoint), *flags], input="\n".join(lines),
                          capture_output=True, text=True, timeout=300, env=env)


def _greedy_reply(checkpoint, prompt_text: str, n: int) -> str:
    model = zdiff.load_model(checkpoint)
    ids = ByteTokenizer().encode(prompt_text, bos=False)
    result = zdiff.generate(model, [ids], SamplingParams(sampler="greedy"), mode="tidar", max_new_tokens=n)
    return ByteTokenizer().decode(result.tokens[0])


def test_a_greedy_turn_streams_what_generate_returns(checkpoint):
    result = _chat(checkpoint, ["/sampler greedy", "hello", "/quit", "never read"], "--max-new-tokens", "10")
    assert result.returncode == 0, result.stderr
    assert "no chat template: turns are sent as plain" in result.stderr  # said, not silent
    assert result.stdout == _greedy_reply(checkpoint, "User: hello\nAssistant:", 10) + "\n"
    stats = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(stats) == 1 and "T/NFE" in stats[0] and "tidar greedy" in stats[0]


def test_commands_change_the_next_turn_and_bad_ones_keep_the_session(checkpoint):
    lines = ["/mode ar", "/temperature 0", "/top-k 4", "/bogus", "/top-p 0", "/max-tokens 0", "/sampler maybe",
             "hi", "/reset", "/sampler logit_mix 0.25", "/mode tidar", "again"]
    result = _chat(checkpoint, lines, "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("zdiff: error:")]
    assert errors == ["zdiff: error: unknown command /bogus (/help lists them)",
                      "zdiff: error: /top-p must be in (0, 1], got 0",
                      "zdiff: error: /max-tokens must be in [1, 32768], got 0",
                      "zdiff: error: /sampler must be lossless, greedy or logit_mix, got 'maybe'"]
    stats = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(stats) == 2
    assert "T/NFE 1.00" in stats[0] and "ar greedy" in stats[0] and "top-k 4" in stats[0]
    assert "tidar logit_mix w=0.25" in stats[1]


def test_the_checkpoints_chat_template_renders_the_turns(checkpoint, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}[assistant]")
    result = _chat(checkpoint, ["/sampler greedy", "yo"], "--max-new-tokens", "8", "--chat-template", template)
    assert result.returncode == 0, result.stderr
    assert "no chat template" not in result.stderr
    assert result.stdout == _greedy_reply(checkpoint, "[user]yo[assistant]", 8) + "\n"
