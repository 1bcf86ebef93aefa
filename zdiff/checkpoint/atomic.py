"""Whole-or-nothing output directories and files: the rules live in zdiff.outputs (one place for every
command); this name stays for the modules that import it from here."""

from ..outputs import atomic_directory, atomic_write_text

__all__ = ["atomic_directory", "atomic_write_text"]
