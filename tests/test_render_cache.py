"""The render cache and compile outputs cannot serve stale kernels: both are tied to zdiff's version, the
templates and codegen sources, and the target's autotune tables (zdiff.codegen.provenance). The edits are
made to a temporary copy of the package, run in a child process."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from zdiff.codegen.compile import compile_spec
from zdiff.codegen.generated import cached_compile_dir, generated_model_class
from zdiff.codegen.provenance import render_provenance
from zdiff.errors import ZdiffError
from zdiff.spec import load_spec

EDIT = "# an edited template\n"


@pytest.fixture
def edited_package(tmp_path):
    """A copy of the zdiff package whose RMSNorm template gained a line."""
    root = tmp_path / "edited"
    shutil.copytree(REPO / "zdiff", root / "zdiff", ignore=shutil.ignore_patterns("__pycache__"))
    template = root / "zdiff" / "templates" / "rmsnorm.py.jinja"
    template.write_text(template.read_text() + EDIT)
    return root


def _run_edited(package, code: str, cache) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(package), ZDIFF_CACHE=str(cache))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=package,  # not the repository: its zdiff would win over the copy
                          timeout=300)


def test_the_manifest_records_version_render_sources_and_tables(tmp_path):
    compile_spec(load_spec("zaya1-tiny"), "cpu", tmp_path / "out", log=lambda *_: None, aot=False)
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for key, value in render_provenance("cpu").items():
        assert on_disk[key] == value and value


def test_an_output_rendered_by_other_templates_is_refused_and_the_cache_re_renders(tmp_path, edited_package,
                                                                                   monkeypatch):
    spec = load_spec("zaya1-tiny")
    cache = tmp_path / "cache"
    monkeypatch.setenv("ZDIFF_CACHE", str(cache))
    compile_spec(spec, "cpu", tmp_path / "ours", log=lambda *_: None, aot=False, check_targets=False)
    ours = cached_compile_dir(spec, "cpu")
    child = _run_edited(edited_package, f"""
        import sys
        from zdiff.codegen.generated import cached_compile_dir, generated_model_class
        from zdiff.errors import ZdiffError
        from zdiff.spec import load_spec
        spec = load_spec("zaya1-tiny")
        print(cached_compile_dir(spec, "cpu"))
        try:
            generated_model_class(spec, "cpu", kernels_dir={str(tmp_path / "ours")!r})
        except ZdiffError as err:
            print(err)
        else:
            sys.exit("loaded a compile output of other templates")
    """, cache)
    assert child.returncode == 0, child.stderr[-2000:]
    theirs_dir, refusal = child.stdout.strip().splitlines()
    theirs = tmp_path / "cache" / "compiled" / theirs_dir.rsplit("/", 1)[-1]
    # the cache keeps one directory per render provenance: the edited templates rendered their own
    assert theirs != ours and theirs.parent == ours.parent
    assert (theirs / "kernels" / "rmsnorm_d32.py").read_text().endswith(EDIT)
    assert not (ours / "kernels" / "rmsnorm_d32.py").read_text().endswith(EDIT)
    assert refusal.startswith(f"{tmp_path / 'ours'}: rendered by zdiff") and "recompile it" in refusal
    # and the other way round: this zdiff refuses what the edited one rendered
    with pytest.raises(ZdiffError, match="render sources"):
        generated_model_class(spec, "cpu", kernels_dir=theirs)


def test_a_stale_cache_directory_is_rendered_again(tmp_path, monkeypatch):
    monkeypatch.setenv("ZDIFF_CACHE", str(tmp_path / "cache"))
    spec = load_spec("zaya1-tiny")
    directory = cached_compile_dir(spec, "cpu")
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "zdiff_version": "0.0.0"}))
    (directory / "kernels" / "rmsnorm_d32.py").write_text("stale")
    assert cached_compile_dir(spec, "cpu") == directory
    assert json.loads((directory / "manifest.json").read_text()) == manifest
    assert (directory / "kernels" / "rmsnorm_d32.py").read_text() != "stale"
