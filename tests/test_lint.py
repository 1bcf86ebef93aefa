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


def test_configs_render_one_entry_per_line_within_120_columns():
    from zdiff.codegen.render import configs_literal

    wide = {"BLOCK_K": 64, "BLOCK_M": 16, "BLOCK_N": 64, "kpack": 2, "matrix_instr_nonkdim": 16, "num_stages": 2,
            "num_warps": 4, "waves_per_eu": 2}
    configs = {"m_small_fwd": {"num_warps": 4}, "moe_experts_e16_h2048_i2048_k1_gate_up_small": wide,
               "m_bwd": {"ROWS": 16, "num_warps": 8}}
    text = configs_literal(configs)
    assert eval(text) == configs
    lines = text.splitlines()
    assert max(map(len, lines)) <= 120 and len(lines) == 2 + 3 + 2  # braces, 3 entries, the wide one on 3 lines
    assert [line.split('"')[1] for line in lines if line.startswith('    "')] == sorted(configs)
