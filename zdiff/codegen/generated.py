"""The generated model class (`backend="triton"`): from a `zdiff compile` output, or rendered into the cache.

The cache ($ZDIFF_CACHE, default ~/.cache/zdiff) holds one directory per (spec, target, render
provenance): zdiff's version, the templates and codegen sources, the target's autotune tables
(`provenance.cache_key`), so an upgraded zdiff or an edited template never reuses old kernels.
A directory given by the user is checked instead, and refused when another zdiff rendered it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ZdiffError
from ..outputs import output_lock
from ..spec import Spec
from ..targets import device_target
from ..user_dirs import cache_root
from .compile import compile_spec
from .provenance import cache_key, check_current, stale_reason
from .render import load_module


def cached_compile_dir(spec: Spec, target: str, rerender: bool = False) -> Path:
    """The render-cache directory of a spec for a target, rendered (or re-rendered) when missing, stale, or
    `rerender` (an entry that would not load)."""
    directory = cache_root() / "compiled" / f"{spec.name}-{spec.hash()[:16]}-{target}-{cache_key(target)}"
    with output_lock(directory, wait=True):  # another process may be rendering the same entry
        if rerender or not (directory / "model.py").is_file() or stale_reason(directory, target) is not None:
            compile_spec(spec, target, directory, force=True, log=lambda *_: None, aot=False, check_targets=False,
                         lock=False)
    return directory


def generated_model_class(spec: Spec, device=None, kernels_dir=None):
    """GeneratedTransformer of `kernels_dir` (a `zdiff compile` output for this spec), or of the cache (an
    entry that does not load, e.g. a file emptied by a full disk, is rendered again)."""
    target = device_target(device).name
    name = f"model_{spec.hash()[:12]}_{target}"
    if kernels_dir is not None:
        return _model_class(Path(kernels_dir), target, name)
    try:
        return _model_class(cached_compile_dir(spec, target), target, name)
    except ZdiffError:
        return _model_class(cached_compile_dir(spec, target, rerender=True), target, name)


def _model_class(kernels_dir: Path, target: str, name: str):
    if not (kernels_dir / "model.py").is_file():
        raise ZdiffError(f"{kernels_dir}: no model.py (run `zdiff compile SPEC --target {target} --out {kernels_dir}`)")
    check_current(kernels_dir, target)
    try:
        return load_module(kernels_dir / "model.py", name).GeneratedTransformer
    except (SyntaxError, ImportError, AttributeError, NameError) as err:  # a damaged file, not a zdiff bug
        raise ZdiffError(f"{kernels_dir}: the generated model does not load ({type(err).__name__}: {err}); "
                         f"render it again with `zdiff compile SPEC --target {target} --out {kernels_dir} "
                         "--force`") from None
