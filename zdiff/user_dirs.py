"""Where zdiff keeps what it makes for a user outside any output they named: the render cache and their autotune
tables. `$ZDIFF_CACHE` (default ~/.cache/zdiff) is the one root; nothing is written inside the installed package."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("ZDIFF_CACHE", Path.home() / ".cache" / "zdiff"))


def user_tables_root() -> Path:
    """Where `zdiff autotune` writes by default: $ZDIFF_CACHE/tables/<device>/<module>.json."""
    return cache_root() / "tables"
