"""The checkpoint's chat template: Jinja2, rendered the way transformers renders it.

Where the template comes from, first found wins: `chat_template.jinja` (newer transformers
save it on its own), else `chat_template` in tokenizer_config.json (a string, or a list of
named templates of which "default" is used). Rendering uses Jinja2's immutable sandbox with
trim_blocks / lstrip_blocks, loop controls, `{% generation %}` blocks, the `raise_exception`,
`strftime_now` and `dict` globals, transformers' `tojson` filter and `tools` / `documents`
set to None, as transformers' apply_chat_template does (tested against it), so templates
written for HF tokenizers render the same text.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import ZdiffError

TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"


class ChatTemplateError(ValueError):
    """The template refused the messages (e.g. `raise_exception('roles must alternate')`)."""


def _raise(message: str):
    raise ChatTemplateError(message)


def _special_token(value) -> str:
    """tokenizer_config.json writes special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content", "")
    return value or ""


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """transformers' `tojson`: no HTML escaping (Jinja's own filter escapes <, >, &)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _GenerationBlocks(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
    transformers; for serving it renders its body unchanged."""

    tags = frozenset({"generation"})

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", origin: str = "template"):
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlocks, "jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.globals["dict"] = dict
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ZdiffError(
                f"{origin}: the chat template is not valid Jinja2 (line {exc.lineno}: {exc.message})"
            ) from None
        self.bos_token, self.eos_token = bos_token, eos_token

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, override: Path | None = None) -> ChatTemplate | None:
        """The checkpoint's template (chat_template.jinja, else tokenizer_config.json's), or `override` (a Jinja
        file, `zdiff serve --chat-template`) with the checkpoint's bos / eos tokens."""
        config_path = checkpoint / CONFIG_FILE
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        tokens = dict(
            bos_token=_special_token(config.get("bos_token")), eos_token=_special_token(config.get("eos_token"))
        )
        if override is not None:
            try:
                source = Path(override).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ZdiffError(f"--chat-template {override}: cannot be read as UTF-8 text ({exc})") from None
            return cls(source, origin=str(override), **tokens)
        if (checkpoint / TEMPLATE_FILE).is_file():
            return cls((checkpoint / TEMPLATE_FILE).read_text(), origin=str(checkpoint / TEMPLATE_FILE), **tokens)
        source = config.get("chat_template")
        if isinstance(source, list):
            named = {entry.get("name"): entry.get("template") for entry in source if isinstance(entry, dict)}
            source = named.get("default")
        if not source:
            return None
        if not isinstance(source, str):
            raise ZdiffError(
                f"{config_path}: chat_template must be a string or a list of named templates, "
                f"got {type(source).__name__}"
            )
        return cls(source, origin=f"{config_path} (chat_template)", **tokens)

    def render(self, messages: list[dict]) -> str:
        """The prompt text, ending where the assistant's answer starts (add_generation_prompt)."""
        try:
            return self.template.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except ChatTemplateError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a template does with odd messages is a bad request
            raise ChatTemplateError(
                f"the chat template failed on these messages: {type(exc).__name__}: {exc}"
            ) from None
