"""The no-sync guard (tests/sync_guard.py) watches every module under zdiff/ by default: a module named
nowhere is caught, an allow-listed one is not, and every allow-list entry names a real module with a reason."""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch
from sync_guard import HOST_MODULES, HostSyncError, no_host_sync, watched


def _function_of(module_name: str, source: str):
    """`source`'s function `f`, defined as if in module `module_name` (the guard reads the caller's __name__)."""
    module = types.ModuleType(module_name)
    module.__dict__["torch"] = torch
    exec(compile(source, f"<{module_name}>", "exec"), module.__dict__)
    return module.f


@pytest.mark.parametrize("sync", ["x[0].item()", "x.tolist()", "int(x[0])", "bool(x[0])", "torch.nonzero(x)",
                                  "torch.tensor([1, 2])", "x.cpu()"])
def test_a_sync_in_a_module_named_nowhere_is_caught(sync):
    name = "zdiff.generation.a_module_no_list_names"
    assert name not in HOST_MODULES
    f = _function_of(name, f"def f(x):\n    return {sync}\n")
    x = torch.arange(3)
    f(x)  # outside the guard: fine
    with no_host_sync(), pytest.raises(HostSyncError, match=rf"called from {name}:2"):
        f(x)


def test_allow_listed_modules_and_code_outside_zdiff_may_sync():
    x = torch.arange(3)
    with no_host_sync():
        for name in list(HOST_MODULES) + ["tests_helper_module", "zdiffextra.other_package"]:
            assert _function_of(name, "def f(x):\n    return x.tolist()\n")(x) == [0, 1, 2]


def test_the_package_root_and_generated_kernels_are_watched():
    assert watched("zdiff") and watched("zdiff.runtime.model") and watched("zdiff_generated_0123.kernels.moe")
    assert not watched("zdiff.runtime.moe") and not watched("torch.nn.functional")
    assert watched("test_engine", also=("test_engine",))


def test_every_allow_list_entry_is_a_real_module_with_a_reason():
    for name, reason in HOST_MODULES.items():
        assert importlib.util.find_spec(name) is not None, name
        assert len(reason.split()) >= 5, (name, reason)
