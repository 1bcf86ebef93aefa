"""zdiff's packages import downward only: the import-linter contracts of pyproject.toml ([tool.importlinter]:
the layers, the engine never importing the reference oracle, and nothing inside zdiff importing the package
root) hold over the real import graph, and the same contracts report an upward import, an engine module that
imports the oracle and a root import in a small package that has them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: import-linter brings tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# import-linter is in the test extra (`make test` installs it): a missing one fails here rather than skipping
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, package_parent: Path) -> subprocess.CompletedProcess:
    """lint-imports over `cwd`/pyproject.toml, with `package_parent` first on the import path."""
    command = str(LINT_IMPORTS) if LINT_IMPORTS.exists() else shutil.which("lint-imports") or "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([command, "--no-cache", "--no-logo"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def layer_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    return [name.strip() for layer in layers for name in layer.replace(":", "|").split("|")]


def test_zdiff_keeps_its_import_contracts():
    result = lint_imports(ROOT, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contracts_report_an_upward_import_and_a_root_import(tmp_path):
    """A package named zdiff with every layer of the contracts, where the lowest layer imports the highest
    package and one subpackage imports the root: both contracts must break, naming those imports."""
    package = tmp_path / "src" / "zdiff"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VERSION = '0'\n")
    for name in layer_modules():
        (package / name).mkdir()
        (package / name / "__init__.py").write_text("")
    (package / "errors" / "__init__.py").write_text("from .. import cli\n")  # upward: errors is the lowest layer
    (package / "spec" / "__init__.py").write_text("from .. import VERSION\n")  # the package root
    (package / "generation" / "oracle").mkdir()
    (package / "generation" / "oracle" / "__init__.py").write_text("")
    for allowed in ("api", "cli_run"):  # the entry points may offer the reference loop
        (package / "generation" / f"{allowed}.py").write_text("from . import oracle\n")
    (package / "generation" / "engine.py").write_text("from .oracle import __name__\n")  # the engine may not
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")

    result = lint_imports(tmp_path, tmp_path / "src")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 broken" in result.stdout, result.stdout
    assert "zdiff.errors -> zdiff.cli" in result.stdout, result.stdout
    assert "zdiff.generation.engine -> zdiff.generation.oracle" in result.stdout, result.stdout
    assert "zdiff.spec -> zdiff" in result.stdout, result.stdout
