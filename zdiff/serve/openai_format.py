"""The JSON objects OpenAI clients parse: completions, chat completions, their stream chunks, errors.

Shapes follow the OpenAI API reference (and what vLLM / SGLang return); `usage` carries
zdiff's `forward_passes` (decode steps) and `prefill_passes` next to the token counts
(clients keep unknown fields).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    forward_passes: int  # decode steps the request took part in (each delivered at least one token)
    prefill_passes: int  # prefill chunks (shared with the prompts admitted with it)

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "forward_passes": self.forward_passes,
            "prefill_passes": self.prefill_passes,
        }

    @classmethod
    def total(cls, parts: list[Usage], prompt_tokens: int) -> Usage:
        """Usage of a request with several choices: each prompt counted once, every choice's work."""
        return cls(prompt_tokens, sum(u.completion_tokens for u in parts), sum(u.forward_passes for u in parts),
                   sum(u.prefill_passes for u in parts))


LOGPROBS_DISTRIBUTION = "ar"  # what `logprobs` report under every sampler; README: "Server for evaluators"


def completion_logprobs(decode, tokens: list[int], scores, first: int, text_offset: int) -> dict:
    """OpenAI's completions `logprobs` object for tokens[first:] of a scored sequence (`scores`: the exact AR
    log-probabilities of tokens[1:], zdiff.eval.scoring). Each position lists the token, its log-probability
    (None for the sequence's first token: nothing conditions it), and the top alternatives with the token
    itself, as OpenAI and vLLM do. `distribution` says which distribution that is: the AR model's, also
    when a logit_mix sampler drew the tokens from its mixture."""
    strings, logprobs, tops, offsets = [], [], [], []
    for j in range(first, len(tokens)):
        strings.append(decode([tokens[j]]))
        offsets.append(text_offset)
        text_offset += len(strings[-1])
        if j == 0:
            logprobs.append(None)
            tops.append(None)
            continue
        logprobs.append(scores.logprobs[j - 1])
        top = {decode([t]): lp for t, lp in reversed(scores.top[j - 1])}  # the likeliest wins a shared string
        top.setdefault(strings[-1], scores.logprobs[j - 1])
        tops.append(top)
    return {"tokens": strings, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets,
            "distribution": LOGPROBS_DISTRIBUTION}


def error_object(
    message: str, *, param: str | None = None, kind: str = "invalid_request_error", code: str | None = None
) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ResponseFormat:
    """Builds the objects of one response: the same id and timestamp on every chunk."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _envelope(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _choice(self, text: str, finish_reason: str | None, token_ids: list[int] | None, delta: bool, index: int = 0,
                logprobs: dict | None = None) -> dict:
        if self.chat:
            if delta:  # the closing chunk of a stream has an empty delta
                body = {"delta": {"content": text} if text else {}}
            else:
                body = {"message": {"role": "assistant", "content": text}}
            choice = {"index": index, **body, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        if token_ids is not None:
            choice["token_ids"] = token_ids
        return choice

    def choice(self, index: int, text: str, finish_reason: str, token_ids: list[int] | None,
               logprobs: dict | None = None) -> dict:
        return self._choice(text, finish_reason, token_ids, delta=False, index=index, logprobs=logprobs)

    def response_of(self, choices: list[dict], usage: Usage) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self._envelope(kind), "choices": choices, "usage": usage.as_dict()}

    def chunk(self, text: str, finish_reason: str | None = None, token_ids: list[int] | None = None,
              index: int = 0) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._envelope(kind), "choices": [self._choice(text, finish_reason, token_ids, True, index)]}

    def role_chunk(self, index: int = 0) -> dict:
        """A chat stream opens with the assistant role and no content, as OpenAI's does."""
        chunk = self.chunk("", index=index)
        chunk["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return chunk

    def usage_chunk(self, usage: Usage) -> dict:
        """Sent last when the request asked `stream_options: {include_usage: true}`: no choices."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._envelope(kind), "choices": [], "usage": usage.as_dict()}


def sse(obj: dict | str) -> str:
    """One server-sent event; the stream ends with `data: [DONE]`."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"


DONE = "[DONE]"
