"""YAML -> Spec: structural conversion driven by the dataclass annotations.

Structural problems (unknown key, wrong type, missing field, value outside a Literal) are
found here; relations between fields are checked in ``validate``. Either way the error
names the field path, the value and, when the spec came from a file, the YAML line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..errors import MISSING, SpecError, ZdiffError
from ..limits import SPEC_MAX_BYTES, YAML_MAX_DEPTH, YAML_MAX_NODES
from .schema import Spec
from .validate import validate

PRESET_DIR = Path(__file__).parent / "presets"


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as 5e6 and 1.0e-5 as numbers.

    PyYAML follows YAML 1.1, where '5.0e6' (no sign after the e) is a string, a trap for
    anyone writing rope_theta by hand.
    """


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the name of a shipped preset (``zaya1-tiny``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if str(name_or_path) in preset_names() and preset.is_file():  # names may hold dots (llama-3.2-1b)
        return preset
    known = ", ".join(preset_names())
    raise ZdiffError(f"spec file not found: {str(name_or_path)!r} (presets: {known})")


def load_spec(name_or_path: str | Path) -> Spec:
    """Read, convert and validate a spec file (or preset name)."""
    path = resolve_spec_path(name_or_path)
    return parse_spec(read_spec_text(path), source=str(path))


def read_spec_text(path: Path) -> str:
    """The file as text: UTF-8 (a BOM is fine), at most SPEC_MAX_BYTES."""
    try:
        with open(path, "rb") as f:
            raw = f.read(SPEC_MAX_BYTES + 1)
    except OSError as exc:
        raise ZdiffError(f"cannot read spec {path}: {exc.strerror}") from None
    if len(raw) > SPEC_MAX_BYTES:
        raise ZdiffError(f"spec {path} is larger than {SPEC_MAX_BYTES} bytes (zdiff.limits.SPEC_MAX_BYTES); "
                         "is it a spec?")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ZdiffError(f"spec {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None


def parse_spec(text: str, source: str | None = None) -> Spec:
    try:
        check_yaml_size(text, source)
        data = yaml.load(text, Loader=_SpecLoader)
        lines = _line_index(yaml.compose(text, Loader=_SpecLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" ({source or 'spec'}:{mark.line + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ZdiffError(f"spec is not valid YAML: {problem}{where}") from None
    except ValueError as exc:  # e.g. an integer literal past Python's digit limit
        raise ZdiffError(f"spec is not valid YAML: {str(exc).splitlines()[0]} ({source or 'spec'})") from None
    except _DuplicateKey as dup:
        raise SpecError(dup.path, MISSING, "is given twice", dup.line, source) from None
    try:
        return spec_from_dict(data)
    except SpecError as err:
        raise err.located(_nearest_line(lines, err.path), source) from None


def spec_from_dict(data: Any) -> Spec:
    if data is None:
        raise SpecError("spec", MISSING, "is empty")
    return validate(_build(Spec, data, ""))


def dump_spec(spec: Spec) -> str:
    return yaml.safe_dump(spec.to_dict(), sort_keys=False, default_flow_style=None)


# --- size guard (before anything walks the document recursively) --------------------------


def check_yaml_size(text: str, source: str | None = None) -> None:
    """Refuse documents nested deeper than YAML_MAX_DEPTH or larger than YAML_MAX_NODES once every
    alias is expanded ("billion laughs"), and aliases that refer to their own anchor.

    Walks PyYAML's event stream, which is produced without recursion, keeping each open
    collection's expanded size; an anchor remembers the size of what it names, so an alias
    costs a dictionary lookup and the walk is linear in the text."""
    where = source or "spec"
    anchored: dict[str, int] = {}
    open_collections: list[list] = [[None, 0]]  # [anchor, expanded nodes so far]
    for event in yaml.parse(text, Loader=_SpecLoader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchored:
                if any(c[0] == event.anchor for c in open_collections):
                    raise ZdiffError(f"spec is not valid YAML: alias *{event.anchor} refers to itself ({where}:{line})")
                raise ZdiffError(f"spec is not valid YAML: alias *{event.anchor} has no anchor before it "
                                 f"({where}:{line})")
            open_collections[-1][1] += anchored[event.anchor]
        elif isinstance(event, yaml.ScalarEvent):
            open_collections[-1][1] += 1
            if event.anchor is not None:
                anchored[event.anchor] = 1
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            open_collections.append([event.anchor, 1])
            if len(open_collections) - 1 > YAML_MAX_DEPTH:
                raise ZdiffError(f"spec nests deeper than {YAML_MAX_DEPTH} levels (zdiff.limits.YAML_MAX_DEPTH) "
                                 f"({where}:{line})")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, size = open_collections.pop()
            if anchor is not None:
                anchored[anchor] = size
            open_collections[-1][1] += size
        else:
            continue
        if sum(c[1] for c in open_collections) > YAML_MAX_NODES:
            raise ZdiffError(f"spec has more than {YAML_MAX_NODES} values once its aliases are expanded "
                             f"(zdiff.limits.YAML_MAX_NODES) ({where}:{line})")


# --- structural conversion -------------------------------------------------------------


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _build(cls, data: Any, path: str):
    where = path or "spec"
    if not isinstance(data, dict):
        raise SpecError(where, data, f"must be a mapping of {cls.__name__} fields")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(fields)}"
            raise SpecError(_join(path, str(key)), MISSING, f"unknown key{hint}")
    values = {}
    for name, f in fields.items():
        sub = _join(path, name)
        if name in data:
            values[name] = _convert(hints[name], data[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(sub, MISSING, "is required")
    return cls(**values)


def _convert(tp, value: Any, path: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if origin is Literal:
        if value not in args:
            raise SpecError(path, value, f"must be one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise SpecError(path, value, "must be a list")
        return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(path, value, "must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(path, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(path, value, "must be a number")
        try:
            number = float(value)
        except OverflowError:  # an integer literal past the float range
            number = math.inf
        if not math.isfinite(number):
            raise SpecError(path, value, "must be a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(path, value, "must be a string")
        return value
    raise TypeError(f"spec schema uses an unsupported annotation {tp!r} at {path}")


# --- YAML line numbers ------------------------------------------------------------------


class _DuplicateKey(Exception):
    def __init__(self, path: str, line: int):
        self.path, self.line = path, line


def _line_index(node, path: str = "", lines: dict | None = None) -> dict[str, int]:
    """Map every field path ('model.attention.head_dim', 'targets[1]') to its 1-based YAML line."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub = _join(path, str(key_node.value))
            if sub in lines:
                raise _DuplicateKey(sub, key_node.start_mark.line + 1)
            lines[sub] = key_node.start_mark.line + 1
            _line_index(value_node, sub, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{path}[{i}]"] = item.start_mark.line + 1
            _line_index(item, f"{path}[{i}]", lines)
    return lines


def _nearest_line(lines: dict[str, int], path: str) -> int | None:
    """The line of the field, or of its closest parent that the file spells out."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None
