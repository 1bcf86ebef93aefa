"""Tokens in, text out: the deltas a stream sends, with stop strings matched across chunk boundaries.

Each push decodes the whole completion so far (a few thousand tokens at most) and sends what
is new. Two things are held back until later tokens settle them:
- a trailing U+FFFD: the bytes of a multi-byte character (or a merged byte-level token) may
  still be arriving; once the next character decodes, text before it no longer changes;
- a suffix that is a prefix of a stop string: "\\n\\n" may be half of a stop that the next
  chunk completes, and text a client has received cannot be taken back.
So the concatenated deltas equal the text of a non-streamed request, and a stop string is
found wherever the engine's chunk boundaries fall. The completion ends *before* the stop
string that is completed first (the longest of those completed at the same character, e.g.
"\n\n" over "\n"), which is not returned, as OpenAI's is not; its tokens end with the one that completed the
stop string (what usage counts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()):
        self.decode = decode
        self.stops = tuple(stops)
        self.tokens: list[int] = []
        self.sent = ""  # text the client has received
        self.stopped = False  # a stop string was found: the request must end

    def push(self, tokens: list[int], finished: bool) -> str:
        """Add newly committed tokens; return the text that may be sent now (maybe "")."""
        if self.stopped:
            return ""
        before = len(self.tokens)
        self.tokens += tokens
        text = self.decode(self.tokens)
        # where a stop string could start: not inside text already sent (it held no stop)
        search_from = max(0, len(self.sent) - max((len(s) for s in self.stops), default=0) + 1)
        hits = [(i + len(stop), i) for stop in self.stops for i in [text.find(stop, search_from)] if i >= 0]
        if hits:
            # the stop string completed first (then the longest): the same cut whatever the chunking
            end, start = min(hits)
            self.stopped = True
            self._keep_tokens_through(end, before)
            return self._advance(text[:start])
        if not finished:
            text = text.rstrip(REPLACEMENT)
            text = text[: len(text) - self._stop_prefix_length(text)]
        return self._advance(text)

    def _keep_tokens_through(self, end: int, before: int) -> None:
        """Drop the tokens after the one that completed the stop string (they are not part of the
        completion: usage counts and token ids end there)."""
        for k in range(before + 1, len(self.tokens) + 1):
            if len(self.decode(self.tokens[:k]).rstrip(REPLACEMENT)) >= end:
                del self.tokens[k:]
                return

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest suffix of `text` that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def _advance(self, text: str) -> str:
        # `text` normally extends what was sent; a tokenizer whose decode of a prefix is not a
        # prefix of the decode (clean-up rules) cannot take sent text back: the client gets
        # the rest from the sent length on
        delta = text[len(self.sent) :]
        self.sent += delta
        return delta
