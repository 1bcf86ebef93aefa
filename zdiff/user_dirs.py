"""Where zdiff keeps what it makes for a user outside any output they named: the render cache and their autotune
tables. `$ZDIFF_CACHE` (default ~/.cache/zdiff) is the one root; nothing is written inside the installed package."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ZdiffError


def cache_root() -> Path:
    value = os.environ.get("ZDIFF_CACHE")
    if value is None:
        return Path.home() / ".cache" / "zdiff"
    if not value.strip():  # an empty path would render into the working directory
        raise ZdiffError("ZDIFF_CACHE is set but empty: unset it (default ~/.cache/zdiff) or name a directory")
    return Path(value)


def user_tables_root() -> Path:
    """Where `zdiff autotune` writes by default: $ZDIFF_CACHE/tables/<device>/<module>.json."""
    return cache_root() / "tables"
