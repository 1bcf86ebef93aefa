"""Compile one kernel family's default configs ahead of time for some targets; JSON reports on stdout.

    python -m zdiff.codegen.aot_check FAMILY SPEC TARGET [TARGET ...]

Every entry point of every plan of the family is compiled with its default config and must
fit (`aot.check_fits`: no spills, LDS / shared memory within the limit). Runs without
TRITON_INTERPRET (the interpreter patches triton.language and breaks real compilation),
which is why the test suite calls it in a subprocess.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

from ..spec import load_spec
from .aot import check_fits, compile_entry
from .families import family
from .render import render_modules


def family_reports(family_name: str, spec_name: str, targets: list[str]) -> list[dict]:
    spec = load_spec(spec_name)
    work = Path(tempfile.mkdtemp(prefix="zdiff-aot-"))
    reports = []
    for target in targets:
        folder = work / target
        folder.mkdir()
        for _, module in render_modules(family(family_name).plans(spec, "bf16", target), spec, folder, f"{target}_"):
            for entry in module.AOT:
                _, report = compile_entry(module, entry, target)
                check_fits(report, json.dumps(module.CONFIGS[entry], sort_keys=True))
                reports.append({**report.to_dict(), "entry": entry})
    return reports


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    family_name, spec_name, *targets = sys.argv[1:]
    print(json.dumps(family_reports(family_name, spec_name, targets)))
