"""`zdiff serve` for evaluators, with the official `openai` client against a live localhost server: logprobs
(exact AR scores, checked against a direct forward), echo with max_tokens 0, token-id and batched prompts, n > 1,
stop_token_ids, ignore_eos, and every field zdiff does not implement refused by name."""

import json

import pytest
import torch

import zdiff
from conftest import REPO
from zdiff.checkpoint.store import save_checkpoint
from zdiff.runtime import build_model
from zdiff.serve.launcher import ServerProcess, child_env
from zdiff.spec import load_spec
from zdiff.tokenize import ByteTokenizer

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

MODEL = "tiny"
TIMEOUT = 120.0
BYTES = ByteTokenizer()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    spec = load_spec("zaya1-tiny")
    directory = tmp_path_factory.mktemp("serve_fields") / "ckpt"
    save_checkpoint(build_model(spec.model, seed=5), spec, directory)
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return directory


@pytest.fixture(scope="module")
def server(checkpoint):
    with ServerProcess(checkpoint, "--max-slots", "4", "--max-queue", "32", "--max-len", "256",
                       "--served-model-name", MODEL, log=checkpoint.parent / "server.log", env=child_env(REPO)) as live:
        yield live


@pytest.fixture(scope="module")
def reference(checkpoint):
    return zdiff.load_model(checkpoint, dtype=torch.float32)


def client(live):
    return openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0, timeout=TIMEOUT)


def direct_logprobs(model, ids):
    """log p(ids[j] | ids[:j]) for j >= 1 and the argmax, from one unbatched forward."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).double(), dim=-1)[0]
    return [logp[j - 1, ids[j]].item() for j in range(1, len(ids))], logp


def test_echo_scores_the_prompt_as_lm_eval_asks(server, reference):
    prompt = "def fibonacci(n):\n    return"
    ids = BYTES.encode(prompt, bos=False)
    r = client(server).completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    choice = r.choices[0]
    assert choice.text == prompt and r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(ids)
    lp = choice.logprobs
    assert lp.tokens == list(prompt) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want, logp = direct_logprobs(reference, ids)
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-4)
    assert lp.text_offset == list(range(len(prompt)))
    for j, top in enumerate(lp.top_logprobs[1:], start=1):
        best = logp[j - 1].topk(3)
        assert len(top) in (3, 4) and max(top.values()) == pytest.approx(best.values[0].item(), abs=1e-4)
        assert all(v <= best.values[0].item() + 1e-4 for v in top.values())
    assert (lp.model_extra or {}).get("distribution") == "ar"


def test_lm_eval_payload_parses_to_the_direct_loglikelihood(server, reference):
    """lm-eval's local-completions loglikelihood request (token ids, max_tokens 1, echo, logprobs 1, batched) and
    its own parser give the exact continuation log-likelihood."""
    pairs = [("import os\nimport ", "sys"), ("class A(object", "):")]
    prompts = [BYTES.encode(c + x, bos=False) for c, x in pairs]
    r = client(server).completions.create(model=MODEL, prompt=prompts, max_tokens=1, temperature=0, logprobs=1,
                                          echo=True, seed=1234)
    assert len(r.choices) == 2 and sorted(c.index for c in r.choices) == [0, 1]
    outputs = r.model_dump()
    ctxlens = [len(BYTES.encode(c, bos=False)) for c, _ in pairs]
    try:
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        parsed = LocalCompletionsAPI.parse_logprobs(outputs, tokens=prompts, ctxlens=ctxlens)
    except ImportError:  # the same arithmetic as lm-eval 0.4's parser
        parsed = [(sum(c["logprobs"]["token_logprobs"][n:-1]), None) for c, n in zip(outputs["choices"], ctxlens)]
    for (context, continuation), ids, n, (logprob, _) in zip(pairs, prompts, ctxlens, parsed):
        want, _ = direct_logprobs(reference, ids)
        assert logprob == pytest.approx(sum(want[n - 1:]), abs=1e-3)


def test_logprobs_of_generated_tokens_under_logit_mix(server, reference):
    prompt = "for i in range("
    r = client(server).completions.create(model=MODEL, prompt=prompt, max_tokens=12, logprobs=2, seed=7,
                                          extra_body={"sampler": "logit_mix", "mix_weight": 0.5,
                                                      "return_token_ids": True, "ignore_eos": True})
    choice = r.choices[0]
    ids = choice.model_extra["token_ids"]
    assert len(ids) == r.usage.completion_tokens == len(choice.logprobs.token_logprobs) > 0
    want, _ = direct_logprobs(reference, BYTES.encode(prompt, bos=False) + ids)
    assert choice.logprobs.token_logprobs == pytest.approx(want[-len(ids):], abs=1e-4)
    assert choice.logprobs.text_offset[0] == len(prompt)


def test_batched_prompts_and_n_choices_with_seeds(server):
    c = client(server)
    r = c.completions.create(model=MODEL, prompt=["ab", "hi"], n=2, max_tokens=6, seed=11,
                             extra_body={"return_token_ids": True})
    as_ids = c.completions.create(model=MODEL, prompt=[[97, 98], [104, 105]], n=2, max_tokens=6, seed=11)
    assert sorted((ch.index, ch.text) for ch in as_ids.choices) == sorted((ch.index, ch.text) for ch in r.choices)
    assert [ch.index for ch in sorted(r.choices, key=lambda ch: ch.index)] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == sum(len(ch.model_extra["token_ids"])
                                                                           for ch in r.choices)
    by_index = {ch.index: ch for ch in r.choices}
    for index, prompt, seed in ((0, "ab", 11), (1, "ab", 12), (2, [104, 105], 11), (3, [104, 105], 12)):
        single = c.completions.create(model=MODEL, prompt=prompt, max_tokens=6, seed=seed,
                                      extra_body={"return_token_ids": True}).choices[0]
        assert single.text == by_index[index].text and single.model_extra["token_ids"] == by_index[index].model_extra[
            "token_ids"], index
    stream = c.completions.create(model=MODEL, prompt="ab", n=2, max_tokens=6, seed=11, stream=True)
    texts, finished = {0: "", 1: ""}, set()
    for chunk in stream:
        for ch in chunk.choices:
            texts[ch.index] += ch.text
            if ch.finish_reason:
                finished.add(ch.index)
    assert finished == {0, 1} and texts == {0: by_index[0].text, 1: by_index[1].text}


def test_chat_with_n_choices_streams_each_index(server):
    c = client(server)
    messages = [{"role": "user", "content": "hi"}]
    whole = c.chat.completions.create(model=MODEL, messages=messages, n=3, max_tokens=5, seed=2)
    assert sorted(ch.index for ch in whole.choices) == [0, 1, 2]
    texts, roles = {}, set()
    for chunk in c.chat.completions.create(model=MODEL, messages=messages, n=3, max_tokens=5, seed=2, stream=True):
        for ch in chunk.choices:
            if ch.delta.role == "assistant":
                roles.add(ch.index)
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
    assert roles == {0, 1, 2} and texts == {ch.index: ch.message.content for ch in whole.choices}
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, logprobs=True)
    assert err.value.body["param"] == "logprobs"


def test_stop_token_ids_end_the_completion(server):
    c = client(server)
    free = c.completions.create(model=MODEL, prompt="import ", max_tokens=8, temperature=0,
                                extra_body={"return_token_ids": True, "ignore_eos": True}).choices[0]
    ids = free.model_extra["token_ids"]
    assert len(ids) == 8
    stop = ids[2]
    stopped = c.completions.create(model=MODEL, prompt="import ", max_tokens=8, temperature=0,
                                   extra_body={"return_token_ids": True, "stop_token_ids": [stop]}).choices[0]
    cut = ids.index(stop) + 1
    assert stopped.model_extra["token_ids"] == ids[:cut] and stopped.finish_reason == "stop"


@pytest.mark.parametrize(("fields", "param"), [
    (dict(extra_body={"min_p": 0.1}), "min_p"),
    (dict(extra_body={"min_tokens": 4}), "min_tokens"),
    (dict(extra_body={"repetition_penalty": 1.2}), "repetition_penalty"),
    (dict(extra_body={"foo": 1}), "foo"),
    (dict(best_of=3), "best_of"),
    (dict(presence_penalty=0.5), "presence_penalty"),
    (dict(max_tokens=0), "max_tokens"),  # without echo
    (dict(stream=True, logprobs=1), "logprobs"),
    (dict(stream=True, echo=True), "echo"),
    (dict(n=17), "n"),
    (dict(prompt=[]), "prompt"),
    (dict(extra_body={"stop_token_ids": [10**6]}), "stop_token_ids"),
    (dict(prompt=[[1, 2], [3, 10**6]]), "prompt"),
    (dict(extra_body={"verify_length": 99}), "verify_length"),
    (dict(extra_body={"verify_length": -1}), "verify_length"),
    (dict(extra_body={"expert_budget": "maybe"}), "expert_budget"),
])
def test_unimplemented_and_unknown_fields_are_refused_by_name(server, fields, param):
    body = dict(model=MODEL, prompt="abc", max_tokens=2)
    body.update(fields)
    with pytest.raises(openai.BadRequestError) as err:
        client(server).completions.create(**body)
    assert err.value.body["param"] == param and param in err.value.body["message"], err.value.body


def test_speculation_options_keep_greedy_tokens(server):
    """verify_length and expert_budget (extra_body) change only how drafts are made and verified: greedy text is
    the same with them as without."""
    c = client(server)
    ids = []
    for extra in ({}, {"verify_length": 1, "expert_budget": "on"}, {"verify_length": 3, "expert_budget": "off"}):
        r = c.completions.create(model=MODEL, prompt="def f(x):", max_tokens=12, temperature=0,
                                 extra_body={"return_token_ids": True, "ignore_eos": True, **extra})
        ids.append(r.choices[0].model_extra["token_ids"])
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 12


def test_neutral_values_and_user_are_accepted(server):
    r = client(server).completions.create(model=MODEL, prompt="abc", max_tokens=2, user="someone", best_of=1,
                                          presence_penalty=0, extra_body={"min_p": 0.0, "min_tokens": 0})
    assert r.choices[0].finish_reason in ("stop", "length")


def test_request_models_decide_per_field():
    from pydantic import ValidationError

    from zdiff.serve.schemas import ChatCompletionRequest, CompletionRequest

    with pytest.raises(ValidationError, match="logprobs: not supported"):
        ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], logprobs=True)
    body = CompletionRequest(model="m", prompt=[[1], [2, 3]], ignore_eos=True, stop_token_ids=[9, 257])
    assert body.prompts == [[1], [2, 3]] and body.stop_tokens((257,)) == (9, 257)
    assert CompletionRequest(model="m", prompt="x", stop_token_ids=[9]).stop_tokens((257,)) == (257, 9)
    assert CompletionRequest(model="m", prompt=[5, 6]).prompts == [[5, 6]]
