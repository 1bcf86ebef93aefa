"""The server's text layer without a server: incremental detokenisation with stop strings, the
chat template, and request validation (fast, pure)."""

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")

from zdiff.errors import ZdiffError
from zdiff.serve.chat_template import ChatTemplate, ChatTemplateError
from zdiff.serve.schemas import (
    CompletionRequest,
    FieldError,
    SamplerDefaults,
    engine_params,
)
from zdiff.serve.text_stream import TextStream
from zdiff.tokenize import ByteTokenizer

decode = ByteTokenizer().decode
ALPHABET = "ab\n é€😀"  # 1- to 4-byte UTF-8 characters


def expected_text(tokens, stops):
    full = decode(tokens)
    # every occurrence, not just the first of each: the one completed first wins, then the longest
    hits = [(i + len(s), i) for s in stops for i in range(len(full)) if full.startswith(s, i)]
    return (full[: min(hits)[1]], True) if hits else (full, False)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=ALPHABET, max_size=30),
    noise=st.lists(st.integers(0, 263), max_size=6),
    cuts=st.lists(st.integers(0, 60), max_size=8),
    stops=st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=3), max_size=3),
)
def test_deltas_concatenate_to_the_text_whatever_the_chunking(text, noise, cuts, stops):
    """Multi-byte characters split across chunks, invalid bytes and special ids (noise), stop
    strings straddling chunk boundaries: the concatenated deltas equal the full decode cut at
    the first stop string, and no delta ever holds text past it."""
    tokens = list(text.encode()) + noise
    bounds = sorted({min(c, len(tokens)) for c in cuts} | {0, len(tokens)})
    stream = TextStream(decode, stops)
    sent = []
    for lo, hi in itertools.pairwise(bounds):
        sent.append(stream.push(tokens[lo:hi], finished=hi == len(tokens)))
        if stream.stopped:
            break
    want, stopped = expected_text(tokens, stops)
    assert "".join(sent) == want and stream.stopped == stopped
    if stopped:  # usage counts through the token that completed the stop string, not beyond
        kept = stream.tokens
        assert kept == tokens[: len(kept)]
        assert any(s in decode(kept) for s in stops)
        assert not any(s in decode(kept[:-1]) for s in stops)


def test_held_back_text_is_released_when_the_request_ends():
    stream = TextStream(decode, ["STOP"])
    assert stream.push(list(b"abST"), finished=False) == "ab"  # "ST" may begin the stop string
    assert stream.push(list("é".encode())[:1], finished=False) == ""  # half a character: "ST" still may be
    assert stream.push(list("é".encode())[1:] + [0xE2], finished=False) == "STé"
    assert stream.push([], finished=True) == "\ufffd"  # the request ended mid-character


def test_streaming_decodes_in_linear_time():
    """Token by token, a long completion with multi-byte characters and a stop string that never comes: the
    tokens handed to `decode` grow linearly with the completion (decoding it whole per push is quadratic)."""
    seen = []

    def counting(ids):
        seen.append(len(ids))
        return decode(ids)

    tokens = list(("abc é€😀\n" * 300).encode())
    stream = TextStream(counting, ["STOP", "\n\n"])
    sent = "".join(stream.push([t], finished=False) for t in tokens) + stream.push([], finished=True)
    assert sent == decode(tokens)
    assert sum(seen) < 10 * len(tokens), (sum(seen), len(tokens))


CHATML = (
    "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chat_template_sources_and_errors(tmp_path):
    assert ChatTemplate.from_checkpoint(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": CHATML}]})
    )
    template = ChatTemplate.from_checkpoint(tmp_path)
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    assert (
        template.render(messages)
        == "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ChatTemplateError, match="unknown role tool"):
        template.render([{"role": "tool", "content": "x"}])
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{{ messages | length }}")  # wins over the config
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "<s>"}}))
    assert ChatTemplate.from_checkpoint(tmp_path).render(messages) == "<s>2"
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}")
    with pytest.raises(ZdiffError, match="not valid Jinja2"):
        ChatTemplate.from_checkpoint(tmp_path)


def test_request_fields_map_onto_engine_params():
    defaults = SamplerDefaults(sampler="logit_mix", mix_weight=0.5, temperature=0.9, top_k=5, top_p=0.8, mode="tidar")
    body = CompletionRequest(model="m", prompt="x", seed=3, top_k=0)
    params = engine_params(body, defaults, 7, (1,))
    assert (
        params.sampler,
        params.mix_weight,
        params.temperature,
        params.top_k,
        params.top_p,
        params.seed,
        params.max_new_tokens,
        params.stop_tokens,
        params.mode,
    ) == ("logit_mix", 0.5, 0.9, 0, 0.8, 3, 7, (1,), "tidar")
    greedy = engine_params(CompletionRequest(model="m", prompt="x", temperature=0, mode="ar"), defaults, 7, ())
    assert (greedy.sampler, greedy.mode) == ("greedy", "ar")
    with pytest.raises(FieldError) as err:
        engine_params(CompletionRequest(model="m", prompt="x", temperature=0, sampler="lossless"), defaults, 7, ())
    assert err.value.param == "temperature"
    seeds = {engine_params(CompletionRequest(model="m", prompt="x"), defaults, 7, ()).seed for _ in range(4)}
    assert len(seeds) > 1  # no seed: a fresh one per request, as OpenAI samples


HF_STYLE = """{%- set ns = namespace(system='') -%}
{%- for m in messages -%}{%- if m.role == 'system' -%}{%- set ns.system = m.content -%}{%- endif -%}{%- endfor -%}
{{ bos_token }}{% if ns.system %}<sys>{{ ns.system | tojson }}</sys>{% endif %}
{% for m in messages if m.role != 'system' %}
  {% if loop.index0 > 5 %}{% break %}{% endif %}
  {% if m.role == 'assistant' %}<a>{% generation %}{{ m.content | trim }}{% endgeneration %}{{ eos_token }}
  {% else %}<u>{{ m.content }}{% if tools is not none %}[tools]{% endif %}</u>
  {% endif %}
{% endfor %}
{% if add_generation_prompt %}<a>{% endif %}"""


def test_chat_template_renders_what_transformers_renders():
    chat_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    messages = [
        {"role": "system", "content": 'Say "<ok>" & stop'},
        {"role": "user", "content": "héllo"},
        {"role": "assistant", "content": "  hi \n"},
        {"role": "user", "content": "again"},
    ]
    tokens = dict(bos_token="<s>", eos_token="</s>")
    ours = ChatTemplate(HF_STYLE, **tokens).render(messages)
    (theirs,), _ = chat_utils.render_jinja_template(
        [messages], chat_template=HF_STYLE, add_generation_prompt=True, **tokens
    )
    assert ours == theirs
    assert '<sys>"Say \\"<ok>\\" & stop"</sys>' in ours and "[tools]" not in ours and ours.endswith("<a>")
