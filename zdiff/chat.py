"""`zdiff chat CKPT`: talk to a checkpoint in the terminal, streamed from the decode engine.

Each turn renders the conversation with the checkpoint's chat template (or `--chat-template FILE`; a
checkpoint without one gets plain "User: ... / Assistant:" turns, and is told so), decodes it as one request
and prints the answer as it is committed, then the step statistics (tokens per forward, tokens/s). Lines
that start with "/" change the sampler between turns: /sampler, /temperature, /top-k, /top-p, /mode,
/max-tokens, /reset, /help, /quit.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

from .errors import ZdiffError

HELP = """commands (between turns):
  /sampler lossless|greedy|logit_mix [W]   verification rule (logit_mix weight W in [0, 1], default 0.5)
  /temperature T   /top-k K   /top-p P      sampling (temperature 0: greedy)
  /mode ar|tidar                            decode with or without drafts
  /max-tokens N                             answer length limit
  /reset                                    forget the conversation
  /help   /quit (or end of input)"""

PLAIN_TURNS = "checkpoint has no chat template: turns are sent as plain 'User: ...' / 'Assistant:' text"


@dataclasses.dataclass
class ChatSettings:
    """What the / commands change; becomes the engine's RequestParams for each turn."""

    sampler: str
    mix_weight: float
    temperature: float
    top_k: int
    top_p: float
    mode: str
    max_new_tokens: int
    seed: int

    def apply(self, command: str, vocab_size: int, tidar: bool) -> str:
        """Apply one `/name value...` line; returns what changed (raises ZdiffError on a bad value)."""
        name, *values = command[1:].split()
        setters = {"sampler": self._sampler, "temperature": self._temperature, "top-k": self._top_k,
                   "top-p": self._top_p, "mode": self._mode, "max-tokens": self._max_tokens}
        if name not in setters:
            raise ZdiffError(f"unknown command /{name} (/help lists them)")
        if not values:
            raise ZdiffError(f"/{name} needs a value (/help)")
        setters[name](values, vocab_size, tidar)
        return self.describe()

    def describe(self) -> str:
        sampler = f"logit_mix w={self.mix_weight:g}" if self.sampler == "logit_mix" else self.sampler
        return (f"{self.mode} {sampler}, temperature {self.temperature:g}, top-k {self.top_k}, top-p {self.top_p:g}, "
                f"max {self.max_new_tokens} tokens")

    def _sampler(self, values, vocab_size, tidar):
        from .sampler import DEFAULT_MIX_WEIGHT, SAMPLERS

        if values[0] not in SAMPLERS:
            raise ZdiffError(f"/sampler must be lossless, greedy or logit_mix, got {values[0]!r}")
        weight = _number("/sampler logit_mix weight", values[1], 0.0, 1.0) if len(values) > 1 else DEFAULT_MIX_WEIGHT
        self.sampler, self.mix_weight = values[0], weight

    def _temperature(self, values, vocab_size, tidar):
        value = _number("/temperature", values[0], 0.0, 1e4)
        if value == 0:
            self.sampler = "greedy"
        else:
            self.temperature = value

    def _top_k(self, values, vocab_size, tidar):
        self.top_k = int(_number("/top-k", values[0], 0, vocab_size, integer=True))

    def _top_p(self, values, vocab_size, tidar):
        value = _number("/top-p", values[0], 0.0, 1.0)
        if value == 0:
            raise ZdiffError("/top-p must be in (0, 1], got 0")
        self.top_p = value

    def _mode(self, values, vocab_size, tidar):
        if values[0] not in ("ar", "tidar"):
            raise ZdiffError(f"/mode must be ar or tidar, got {values[0]!r}")
        if values[0] == "tidar" and not tidar:
            raise ZdiffError("/mode tidar: this checkpoint has no mask token (convert it: zdiff train --mode tidar)")
        self.mode = values[0]

    def _max_tokens(self, values, vocab_size, tidar):
        from . import limits

        self.max_new_tokens = int(_number("/max-tokens", values[0], 1, limits.MAX_NEW_TOKENS, integer=True))


def _number(what: str, text: str, low: float, high: float, integer: bool = False) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise ZdiffError(f"{what} must be {'an integer' if integer else 'a number'}, got {text!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ZdiffError(f"{what} must be in [{low:g}, {high:g}], got {text}")
    return value


def _plain_turns(messages: list[dict]) -> str:
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    return "".join(f"{names[m['role']]}: {m['content']}\n" for m in messages) + "Assistant:"


class ChatSession:
    """One conversation on one engine slot; `turn(text, write)` streams an answer through `write`."""

    def __init__(self, engine, tokenizer, template, settings: ChatSettings, stop_tokens: tuple[int, ...],
                 system: str | None = None):
        self.engine, self.tokenizer, self.template = engine, tokenizer, template
        self.settings, self.stop_tokens, self.system = settings, stop_tokens, system
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt_ids(self) -> list[int]:
        text = self.template.render(self.messages) if self.template is not None else _plain_turns(self.messages)
        return self.tokenizer.encode(text).tolist()

    def turn(self, text: str, write) -> dict:
        from .generation.requests import RequestParams
        from .serve.text_stream import TextStream

        self.messages.append({"role": "user", "content": text})
        s = self.settings
        params = RequestParams(max_new_tokens=s.max_new_tokens, mode=s.mode, sampler=s.sampler,
                               temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, mix_weight=s.mix_weight,
                               seed=s.seed + len(self.messages), stop_tokens=self.stop_tokens)
        try:
            prompt = self.prompt_ids()
            if len(prompt) + s.max_new_tokens > self.engine.max_len:
                raise ZdiffError(f"the conversation is {len(prompt)} tokens; with /max-tokens {s.max_new_tokens} "
                                 f"it exceeds --max-len {self.engine.max_len}: /reset, or lower /max-tokens")
            request = self.engine.add(prompt, params)
        except ZdiffError:
            self.messages.pop()  # the turn did not happen
            raise
        stream = TextStream(self.tokenizer.decode)
        start = time.perf_counter()
        finished = False
        while not finished:
            for event in self.engine.step():
                if event.request_id == request:
                    write(stream.push(event.tokens, event.finished))
                    finished = event.finished
        result = self.engine.result(request)
        seconds = time.perf_counter() - start
        self.messages.append({"role": "assistant", "content": stream.sent})
        steps = max(result.forward_passes, 1)
        return {"tokens": len(result.tokens), "forward_passes": result.forward_passes,
                "tokens_per_forward": len(result.tokens) / steps, "tokens_per_s": len(result.tokens) / seconds,
                "finish_reason": result.finish_reason, "settings": s.describe()}


def run_chat(args) -> int:
    from .generation.cli_run import (
        checkpoint_tokenizer,
        resolve_device,
        resolve_dtype,
        sampling_from_flags,
        stop_tokens_of,
    )
    from .generation.engine import Engine
    from .serve.chat_template import ChatTemplate
    from .spec import load_spec

    checkpoint = Path(args.checkpoint)
    device = resolve_device(args.device)
    template = ChatTemplate.from_checkpoint(checkpoint, override=args.chat_template)
    engine = Engine.from_checkpoint(checkpoint, backend=args.backend, device=device,
                                    dtype=resolve_dtype(args.dtype, device), max_slots=1, max_len=args.max_len)
    spec = load_spec(checkpoint / "spec.yaml")
    tokenizer = checkpoint_tokenizer(checkpoint, spec)
    tidar = engine.diffusion is not None
    mode = args.mode or ("tidar" if tidar else "ar")
    if mode == "tidar" and not tidar:
        raise ZdiffError("--mode tidar: this checkpoint has no mask token (convert it with zdiff train --mode tidar)")
    params = sampling_from_flags(args, spec)
    settings = ChatSettings(params.sampler, params.mix_weight, params.temperature, params.top_k, params.top_p, mode,
                            args.max_new_tokens, args.seed)
    session = ChatSession(engine, tokenizer, template, settings, stop_tokens_of(checkpoint, tokenizer), args.system)
    interactive = sys.stdin.isatty()
    note = sys.stderr
    if template is None:
        print(f"zdiff: note: {PLAIN_TURNS}", file=note)
    print(f"zdiff chat: {spec.name}, {settings.describe()} (/help for commands)", file=note)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        try:
            if line == "/help":
                print(HELP, file=note)
            elif line == "/reset":
                session.reset()
                print("(conversation forgotten)", file=note)
            elif line.startswith("/"):
                print(f"({settings.apply(line, spec.model.vocab_size, tidar)})", file=note)
            else:
                stats = session.turn(line, write)
                write("\n")
                print(f"[{stats['tokens']} tokens in {stats['forward_passes']} forwards: T/NFE "
                      f"{stats['tokens_per_forward']:.2f}, {stats['tokens_per_s']:.1f} tokens/s; "
                      f"{stats['settings']}; {stats['finish_reason']}]", file=note)
        except ZdiffError as err:  # a bad command or an over-long conversation: say so, keep the session
            print(f"zdiff: error: {err}", file=note)
    return 0
