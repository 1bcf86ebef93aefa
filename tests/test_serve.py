"""`zdiff serve` end to end: the official `openai` client against live servers on localhost.

A random-weight zaya1-tiny checkpoint (byte-level vocabulary, CPU). Two servers: `server`
(chat template, 4 slots) and `guarded` (no chat template, --api-key, 1 slot + 1 queued
request), which the SIGTERM test stops at the end. Every request is bounded (a few dozen tokens at most),
every client has a timeout and no retries, so a hang fails the test instead of CI.
"""

import json
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO, run_cli
from zdiff.checkpoint.store import save_checkpoint
from zdiff.generation.engine import Engine, RequestParams
from zdiff.runtime import build_model
from zdiff.serve.launcher import ServerProcess, child_env  # stdlib only: importable without the serve extra
from zdiff.spec import load_spec
from zdiff.tokenize import ByteTokenizer

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
KEY = "sk-test-key"
MODEL = "tiny"
TIMEOUT = 120.0  # seconds per request: generous for a loaded 2-core CI machine, finite for a hang
EOS = ByteTokenizer().eos_id


def decode(ids):
    return ByteTokenizer().decode(ids)


def _checkpoint(directory, chat_template: bool):
    spec = load_spec("zaya1-tiny")
    save_checkpoint(build_model(spec.model, seed=3), spec, directory)
    if chat_template:
        config = {"chat_template": CHAT_TEMPLATE, "bos_token": {"content": "<s>"}, "eos_token": "</s>"}
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return _checkpoint(root / "chat", True), _checkpoint(root / "plain", False), root


@pytest.fixture(scope="module")
def server(checkpoints):
    chat, _, root = checkpoints
    with ServerProcess(
        chat,
        "--max-slots",
        "4",
        "--max-queue",
        "32",
        "--max-len",
        "256",
        "--served-model-name",
        MODEL,
        log=root / "server.log",
        env=child_env(REPO),
    ) as live:
        yield live


@pytest.fixture(scope="module")
def guarded(checkpoints):
    _, plain, root = checkpoints
    with ServerProcess(
        plain,
        "--max-slots",
        "1",
        "--max-queue",
        "1",
        "--max-len",
        "128",
        "--api-key",
        KEY,
        "--served-model-name",
        MODEL,
        log=root / "guarded.log",
        env=child_env(REPO),
    ) as live:
        yield live


def client(live, key="unused"):
    return openai.OpenAI(base_url=live.base_url, api_key=key, max_retries=0, timeout=TIMEOUT)


def metrics(live) -> dict[str, float]:
    with urllib.request.urlopen(f"{live.url}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in lines if not line.startswith("#"))}


def stream_text(stream):
    """(text, token ids, finish reason, usage) of a completions or chat stream, chunk by chunk."""
    text, ids, finish, usage = [], [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "" if hasattr(choice, "delta") else choice.text)
            ids += (choice.model_extra or {}).get("token_ids") or []
            finish = choice.finish_reason or finish
    return "".join(text), ids, finish, usage


def test_models_health_and_metrics(server):
    c = client(server)
    assert [m.id for m in c.models.list().data] == [MODEL]
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ok"}
    before = metrics(server)
    r = c.completions.create(model=MODEL, prompt="import os", max_tokens=8, seed=1)
    after = metrics(server)
    for name in (
        "zdiff_queue_depth",
        "zdiff_active_slots",
        "zdiff_slot_occupancy",
        "zdiff_tokens_per_forward",
        "zdiff_step_seconds_count",
        "zdiff_accepted_drafts_count",
    ):
        assert name in after, name
    assert (
        after['zdiff_requests_total{endpoint="/v1/completions",status="200"}']
        == before.get('zdiff_requests_total{endpoint="/v1/completions",status="200"}', 0) + 1
    )
    assert after["zdiff_prompt_tokens_total"] - before.get("zdiff_prompt_tokens_total", 0) == len("import os")
    assert (
        after["zdiff_completion_tokens_total"] - before.get("zdiff_completion_tokens_total", 0)
        == r.usage.completion_tokens
    )
    prefill = r.usage.model_extra["prefill_passes"]
    assert (
        after["zdiff_forward_passes_total"] - before["zdiff_forward_passes_total"] >= r.usage.forward_passes + prefill
    )
    assert r.usage.forward_passes > 0 and prefill == 1  # a 9-token prompt is one prefill chunk
    assert after["zdiff_generated_tokens_total"] - before["zdiff_generated_tokens_total"] >= r.usage.completion_tokens
    steps = after["zdiff_accepted_drafts_count"] - before["zdiff_accepted_drafts_count"]
    assert steps >= 1 and after["zdiff_step_seconds_count"] > before["zdiff_step_seconds_count"]

    def option_steps(m):  # the policy's (P, d, budget) choices, one counter per option
        return sum(v for k, v in m.items() if k.startswith("zdiff_step_options_total{"))
    engine_steps = after["zdiff_engine_steps_total"] - before["zdiff_engine_steps_total"]
    assert option_steps(after) - option_steps(before) == engine_steps > 0


def test_greedy_equals_zdiff_generate(server, checkpoints):
    """`zdiff generate` decodes on the engine too: same tokens, same forward passes."""
    chat, _, root = checkpoints
    prompt, n = "def fib(n):", 10
    r = client(server).completions.create(
        model=MODEL, prompt=prompt, max_tokens=n, temperature=0, extra_body={"return_token_ids": True}
    )
    ids = r.choices[0].model_extra["token_ids"]
    cli = run_cli(
        "generate",
        chat,
        "--prompt",
        prompt,
        "--sampler",
        "greedy",
        "--max-new-tokens",
        n,
        "--json",
        env_extra={"ZDIFF_CACHE": str(root / "cache")},
    )
    assert cli.returncode == 0, cli.stderr
    generated = json.loads(cli.stdout)
    assert generated["tokens"] == [ids] and len(ids) == r.usage.completion_tokens
    (run,) = generated["runs"].values()
    assert r.usage.forward_passes == run["forward_passes"] and r.usage.prompt_tokens == len(prompt)
    assert r.choices[0].text == decode(ids) == generated["texts"][0]
    assert r.choices[0].finish_reason == ("stop" if ids[-1] == EOS else "length")


def test_streaming_equals_non_streamed_text(server):
    c = client(server)
    for sampler in ({"sampler": "lossless"}, {"sampler": "logit_mix", "mix_weight": 0.5}, {"mode": "ar"}):
        common = dict(
            model=MODEL,
            prompt="class Node:",
            max_tokens=12,
            seed=11,
            temperature=0.8,
            extra_body={**sampler, "return_token_ids": True},
        )
        whole = c.completions.create(**common)
        text, ids, finish, usage = stream_text(
            c.completions.create(**common, stream=True, stream_options={"include_usage": True})
        )
        assert text == whole.choices[0].text, sampler
        assert ids == whole.choices[0].model_extra["token_ids"] and len(ids) == usage.completion_tokens
        assert finish == whole.choices[0].finish_reason
        assert usage.prompt_tokens == whole.usage.prompt_tokens == len("class Node:")
        if sampler.get("mode") == "ar":  # one token per decode step
            assert whole.usage.forward_passes == usage.forward_passes == len(ids)


def test_chat_renders_the_checkpoint_template(server):
    c = client(server)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    rendered = "<s><|system|>be brief\n<|user|>hi\n<|assistant|>"
    chat = c.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, seed=5, extra_body={"return_token_ids": True}
    )
    assert chat.usage.prompt_tokens == len(rendered.encode())
    plain = c.completions.create(
        model=MODEL, prompt=rendered, max_tokens=12, seed=5, extra_body={"return_token_ids": True}
    )
    assert chat.choices[0].message.content == plain.choices[0].text
    assert chat.choices[0].model_extra["token_ids"] == plain.choices[0].model_extra["token_ids"]
    assert chat.choices[0].message.role == "assistant" and chat.object == "chat.completion"
    chunks = list(c.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, seed=5, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason


def test_stop_strings_end_the_text_in_both_modes(server):
    c = client(server)
    common = dict(model=MODEL, prompt="for i in range(", max_tokens=16, seed=4, temperature=1.0)
    whole = c.completions.create(**common, extra_body={"return_token_ids": True})
    full, ids = whole.choices[0].text, whole.choices[0].model_extra["token_ids"]
    # a stop string from the printable bytes of the sampled text: two characters if any two are adjacent
    printable = [i for i in range(2, len(ids)) if 32 <= ids[i] < 127]
    pairs = [i for i in printable if i + 1 in printable]
    assert printable, f"no printable byte in {ids}"
    at = pairs[0] if pairs else printable[0]
    stop = bytes(ids[at : at + (2 if pairs else 1)]).decode()
    expected = full[: full.find(stop)]
    r = c.completions.create(**common, stop=[stop, "\x00never"], extra_body={"return_token_ids": True})
    assert (r.choices[0].text, r.choices[0].finish_reason) == (expected, "stop")
    kept = r.choices[0].model_extra["token_ids"]
    assert kept == ids[: len(kept)] and r.usage.completion_tokens == len(kept)
    assert stop in decode(kept) and stop not in decode(kept[:-1])  # usage ends with the token that completed it
    text, _, finish, _ = stream_text(c.completions.create(**common, stop=stop, stream=True))
    assert (text, finish) == (expected, "stop")


def test_sixteen_concurrent_streams_with_different_samplers(server, checkpoints):
    """16 clients at once on 4 slots (continuous batching): every stream completes, its chunks
    carry each token exactly once, and the tokens equal the engine's for the same requests."""
    samplers = [
        dict(sampler="lossless"),
        dict(sampler="logit_mix", mix_weight=0.3),
        dict(sampler="greedy"),
        dict(mode="ar", top_k=20),
        dict(sampler="lossless", top_p=0.9),
        dict(mode="ar", sampler="greedy"),
    ]
    requests = [
        dict(prompt=f"x{i} = ", seed=100 + i, max_tokens=2 + i % 4, extra=samplers[i % len(samplers)])
        for i in range(16)
    ]

    def one(req):
        c = client(server)
        stream = c.completions.create(
            model=MODEL,
            prompt=req["prompt"],
            max_tokens=req["max_tokens"],
            seed=req["seed"],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={**req["extra"], "return_token_ids": True},
        )
        return stream_text(stream)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, requests))
    engine = Engine.from_checkpoint(checkpoints[0], device="cpu", max_slots=4, max_len=256)
    ids = [
        engine.add(
            list(req["prompt"].encode()),
            RequestParams(
                max_new_tokens=req["max_tokens"],
                seed=req["seed"],
                stop_tokens=(EOS,),
                **{k: v for k, v in req["extra"].items()},
            ),
        )
        for req in requests
    ]
    expected = engine.run()
    for req, rid, (text, tokens, finish, usage) in zip(requests, ids, results):
        assert finish in ("stop", "length"), req
        assert tokens == expected[rid].tokens, req
        assert len(tokens) == usage.completion_tokens and text == decode(tokens), req


def test_auth_bad_requests_and_the_missing_chat_template(guarded):
    with pytest.raises(openai.AuthenticationError):
        client(guarded, key="wrong").completions.create(model=MODEL, prompt="a", max_tokens=2)
    request = urllib.request.Request(f"{guarded.base_url}/models")
    with pytest.raises(urllib.error.HTTPError) as no_key:
        urllib.request.urlopen(request, timeout=10)
    assert no_key.value.code == 401 and json.loads(no_key.value.read())["error"]["code"] == "invalid_api_key"
    c = client(guarded, key=KEY)
    cases = [  # (fields, the param the error must name)
        (dict(temperature=-1), "temperature"),
        (dict(n=0), "n"),
        (dict(top_p=0), "top_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(extra_body={"sampler": "beam"}), "sampler"),
        (dict(extra_body={"mode": "fast"}), "mode"),
        (dict(extra_body={"mix_weight": 2}), "mix_weight"),
        (dict(extra_body={"top_k": -1}), "top_k"),
        (dict(logprobs=21), "logprobs"),
        (dict(stop=[""]), "stop"),
        (dict(seed=-5), "seed"),
        (dict(max_tokens=200), "max_tokens"),  # prompt + max_tokens over the 128-token cache
        (dict(prompt=[1, 2, 999]), "prompt"),
        (dict(prompt=""), "prompt"),
    ]
    for fields, param in cases:
        body = dict(model=MODEL, prompt="abc", max_tokens=2)
        body.update(fields)
        with pytest.raises(openai.BadRequestError) as err:
            c.completions.create(**body)
        error = err.value.body
        assert err.value.status_code == 400 and error["param"] == param, (fields, error)
        assert error["type"] == "invalid_request_error" and param in error["message"], (fields, error)
    with pytest.raises(openai.NotFoundError) as err:
        c.completions.create(model="gpt-4", prompt="a", max_tokens=2)
    assert err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert err.value.body["param"] == "messages" and "chat template" in err.value.body["message"]
    raw = urllib.request.Request(
        f"{guarded.base_url}/completions",
        data=b'{"model": "tiny", "prompt": ',
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as bad_json:
        urllib.request.urlopen(raw, timeout=10)
    assert bad_json.value.code == 400 and "not valid JSON" in json.loads(bad_json.value.read())["error"]["message"]


def _wait_for(live, condition, seconds=60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        values = metrics(live)
        if condition(values):
            return values
        time.sleep(0.05)
    raise AssertionError(f"metrics never satisfied the condition: {values}")


def test_queue_full_and_disconnects_free_slots(guarded):
    c = client(guarded, key=KEY)
    long = dict(model=MODEL, prompt="while True:", max_tokens=100, temperature=0, stream=True)
    running, queued = c.completions.create(**long), c.completions.create(**long)  # 1 slot + 1 queue place
    next(iter(running))  # decoding has started
    with pytest.raises(openai.APIStatusError) as full:
        c.completions.create(model=MODEL, prompt="a", max_tokens=2)
    assert full.value.status_code == 503 and full.value.response.headers["retry-after"] == "1"
    assert full.value.body["code"] == "queue_full"
    _wait_for(guarded, lambda m: m["zdiff_active_slots"] == 1 and m["zdiff_queue_depth"] == 1)
    queued.close()  # leaves while still queued
    running.close()  # leaves mid-stream
    before = metrics(guarded)["zdiff_engine_steps_total"]
    freed = _wait_for(guarded, lambda m: m["zdiff_active_slots"] == 0 and m["zdiff_queue_depth"] == 0)
    # the disconnect is noticed at the next chunk the server sends, the slot freed at the step after
    assert freed["zdiff_engine_steps_total"] - before <= 3
    # a non-streamed client that gives up (timeout) frees its slot too; 100 tokens took ~1 s on a quiet 2-core
    # machine (a 1 s timeout raced the answer), so the client gives up after a quarter of that
    with pytest.raises(openai.APITimeoutError):
        c.with_options(timeout=0.25, max_retries=0).completions.create(model=MODEL, prompt="def", max_tokens=100,
                                                                       temperature=0, extra_body={"ignore_eos": True})
    _wait_for(guarded, lambda m: m["zdiff_active_slots"] == 0)
    assert c.completions.create(model=MODEL, prompt="ok", max_tokens=3).usage.completion_tokens >= 1


def test_sigterm_drains_in_flight_requests_and_exits_0(guarded):
    """Stops the `guarded` server: keep this the last test that uses it."""
    stream = client(guarded, key=KEY).completions.create(
        model=MODEL,
        prompt="import sys",
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"return_token_ids": True},
    )
    chunks = iter(stream)
    first = next(chunks)
    guarded.process.send_signal(signal.SIGTERM)
    _, ids, finish, usage = stream_text(chunks)
    ids = first.choices[0].model_extra["token_ids"] + ids
    assert finish in ("length", "stop") and len(ids) == usage.completion_tokens
    assert finish == "stop" or len(ids) == 6
    assert guarded.terminate(timeout=60) == 0, guarded.log()[-2000:]
    assert "Application shutdown complete" in guarded.log()
    with pytest.raises(openai.APIConnectionError):  # no longer listening
        client(guarded, key=KEY).models.list()


def test_serve_cli_refuses_bad_flags(tmp_path, capsys):
    from zdiff.cli import build_parser, main

    assert build_parser().parse_args(["serve", "ck"]).host == "127.0.0.1"
    assert main(["serve", str(tmp_path), "--max-slots", "0"]) == 2
    assert capsys.readouterr().err == "zdiff: error: --max-slots must be at least 1, got 0\n"
