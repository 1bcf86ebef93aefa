"""Tokens in, text out: the deltas a stream sends, with stop strings matched across chunk boundaries.

Decoding is incremental (the idea of `tokenizers`' DecodeStream and vLLM's detokenizer, for any
`decode`): each push decodes only a short window, the tokens since the last settled point plus the
few before it (so a tokenizer's context-dependent clean-up, e.g. SentencePiece's leading space,
sees the same neighbours as in a whole decode), and appends the new characters. The work per push
is proportional to the push, not to the completion. Two things are held back until later tokens
settle them:
- text whose window decode ends in U+FFFD: the bytes of a multi-byte character (or a merged
  byte-level token) may still be arriving; once the next character decodes, it no longer changes;
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
        self.text = ""  # decoded text of tokens[:read_offset] (settled)
        self.sent = 0  # characters of `text` the client has received
        self.stopped = False  # a stop string was found: the request must end
        self._prefix_offset = 0  # the window's first token (context for the clean-up rules)
        self._read_offset = 0  # tokens before this are in `text`

    def _settle(self, finished: bool) -> str:
        """Append the text of the unsettled tokens to `text` when it is complete (always when `finished`);
        otherwise return its visible part (without trailing U+FFFD), which later tokens do not change."""
        if self._read_offset == len(self.tokens):
            return ""
        window = self.tokens[self._prefix_offset:]
        before = self.decode(window[: self._read_offset - self._prefix_offset])
        after = self.decode(window)
        if finished or (len(after) > len(before) and not after.endswith(REPLACEMENT)):
            self.text += after[len(before):]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.tokens)
            return ""
        return after[len(before):].rstrip(REPLACEMENT)

    def push(self, tokens: list[int], finished: bool) -> str:
        """Add newly committed tokens; return the text that may be sent now (maybe "")."""
        if self.stopped:
            return ""
        before = self._read_offset  # tokens after it may have completed a stop string
        self.tokens += tokens
        pending = self._settle(finished)
        # where a stop string could start: not inside text already sent (it held no stop); only the tail
        # from there is searched, so a push costs the length of the push, not of the completion
        longest = max((len(s) for s in self.stops), default=1)
        search_from = max(0, self.sent - longest + 1)
        offset = min(search_from, len(self.text))  # the tail's first character in text + pending
        tail = self.text[offset:] + pending
        hits = [(i + len(stop), i) for stop in self.stops for i in [tail.find(stop, search_from - offset)] if i >= 0]
        if hits:
            # the stop string completed first (then the longest): the same cut whatever the chunking
            end, start = min(hits)
            self.stopped = True
            self._keep_tokens_through(offset + end, before)
            return self._advance(offset + start, pending)
        end = offset + len(tail)
        if not finished:
            end -= self._stop_prefix_length(tail)
        return self._advance(end, pending)

    def _keep_tokens_through(self, end: int, before: int) -> None:
        """Drop the tokens after the one that completed the stop string (they are not part of the
        completion: usage counts and token ids end there). Decodes once per request, at the stop."""
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

    def _advance(self, end: int, pending: str) -> str:
        """Send (text + pending)[sent:end] (nothing when the end lies in what was sent)."""
        offset = min(self.sent, len(self.text))  # sent text may reach into pending
        delta = (self.text[offset:] + pending)[self.sent - offset: max(self.sent, end) - offset]
        self.sent += len(delta)
        return delta
