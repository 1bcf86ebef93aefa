"""What a rendered compile output depends on, recorded in its manifest and checked when it is loaded.

A compile output (kernels, model.py) is a pure function of the spec, the target, zdiff's version
and the sources that render it: the Jinja2 templates and the codegen modules that fill them
(plans, constants, filters). The generated model also reads the autotune tables of its target
at import. `render_provenance` fingerprints all of these; `zdiff compile` writes them into
manifest.json; the render cache keys its directories on them (so an upgrade or an edited
template renders afresh instead of serving stale kernels) and `load_model(kernels_dir=...)`
refuses an output whose zdiff version or render sources differ from the running ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .._version import __version__
from ..autotune.tables import tables_root
from ..errors import ZdiffError

PACKAGE = Path(__file__).resolve().parent.parent
# the templates, the codegen modules that fill them, and the visibility rule rendered into the kernels
RENDER_SOURCES = (("templates", "*.jinja"), ("codegen", "**/*.py"), ("pattern", "visibility.py"))
CHECKED = ("zdiff_version", "render_hash")  # what makes kernels stale; tables are read at load time


def _digest(root: Path, patterns) -> str:
    sha = hashlib.sha256()
    for folder, pattern in patterns:
        for path in sorted((root / folder).glob(pattern)):
            sha.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()


def render_provenance(target: str) -> dict:
    """{zdiff_version, render_hash (templates + codegen sources), tables_dir and tables_hash (the target's tables
    this process reads: $ZDIFF_TABLES, the user's or the shipped ones, zdiff.autotune.tables)}."""
    root = tables_root(target)
    return {"zdiff_version": __version__, "render_hash": _digest(PACKAGE, RENDER_SOURCES),
            "tables_dir": str(root / target), "tables_hash": _digest(root, ((target, "*.json"),))}


def cache_key(target: str) -> str:
    """16 hex digits naming a render-cache directory: changes with any input of `render_provenance`."""
    return hashlib.sha256(json.dumps(render_provenance(target), sort_keys=True).encode()).hexdigest()[:16]


def stale_reason(directory: Path, target: str) -> str | None:
    """Why a compile output cannot be loaded by this zdiff (None: it can)."""
    path = Path(directory) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return "no readable manifest.json"
    current = render_provenance(target)
    found = {key: manifest.get(key) for key in CHECKED}
    if found == {key: current[key] for key in CHECKED}:
        return None
    return (f"rendered by zdiff {found['zdiff_version']} (render sources {str(found['render_hash'])[:12]}), "
            f"this is zdiff {current['zdiff_version']} (render sources {current['render_hash'][:12]})")


def check_current(directory: Path, target: str, spec_path: str = "SPEC") -> None:
    """Refuse, in one line, a compile output this zdiff did not render."""
    reason = stale_reason(directory, target)
    if reason is not None:
        raise ZdiffError(f"{directory}: {reason}; recompile it: zdiff compile {spec_path} --target {target} "
                         f"--out {directory} --force")
