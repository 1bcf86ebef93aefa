"""ruff (pyproject [tool.ruff]) over the package, the tests, the benchmarks and a rendered compile of every preset
for every target: generated sources are formatted (one config per line, at most 120 columns) and lint-clean."""

import subprocess
import sys

from conftest import REPO
from zdiff.codegen.compile import compile_spec
from zdiff.spec import load_spec
from zdiff.targets import TARGETS


def _ruff(*paths) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml")]
    return subprocess.run([*command, *map(str, paths)], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_the_sources_are_lint_clean():
    result = _ruff("zdiff", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_every_rendered_preset_is_lint_clean(tmp_path):
    presets = sorted((REPO / "examples" / "specs").glob("*.yaml"))
    assert presets
    for path in presets:
        spec = load_spec(path)
        for target in TARGETS:
            compile_spec(spec, target, tmp_path / f"{spec.name}-{target}", log=lambda *_: None, aot=False,
                         check_targets=False)
    result = _ruff(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
