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

    def _choice(self, text: str, finish_reason: str | None, token_ids: list[int] | None, delta: bool) -> dict:
        if self.chat:
            if delta:  # the closing chunk of a stream has an empty delta
                body = {"delta": {"content": text} if text else {}}
            else:
                body = {"message": {"role": "assistant", "content": text}}
            choice = {"index": 0, **body, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        if token_ids is not None:
            choice["token_ids"] = token_ids
        return choice

    def response(self, text: str, finish_reason: str, usage: Usage, token_ids: list[int] | None) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            **self._envelope(kind),
            "choices": [self._choice(text, finish_reason, token_ids, delta=False)],
            "usage": usage.as_dict(),
        }

    def chunk(self, text: str, finish_reason: str | None = None, token_ids: list[int] | None = None) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._envelope(kind), "choices": [self._choice(text, finish_reason, token_ids, delta=True)]}

    def role_chunk(self) -> dict:
        """A chat stream opens with the assistant role and no content, as OpenAI's does."""
        chunk = self.chunk("")
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
