"""Render kernel plans through the Jinja2 templates shipped in zdiff/templates."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import textwrap
from pathlib import Path

import jinja2

from ..pattern.visibility import triton_visible_source
from ..spec import Spec
from .plan import KernelPlan


def python_literal(value) -> str:
    """repr with dict keys sorted, so rendered constants never depend on insertion order."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {python_literal(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, (list, tuple)):
        items = ", ".join(python_literal(v) for v in value)
        if not isinstance(value, tuple):
            return f"[{items}]"
        return f"({items},)" if len(value) == 1 else f"({items})"
    return repr(value)


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("zdiff", "templates"),
    undefined=jinja2.StrictUndefined,  # a missing plan constant is an error, not an empty string
    keep_trailing_newline=True,
    trim_blocks=True,  # block tags ({% if %} lines) leave no blank lines in the generated source
    lstrip_blocks=True,
    autoescape=False,
)
_ENV.filters["py"] = python_literal
_ENV.globals["visible_function"] = triton_visible_source  # the TiDAR visibility rule, rendered into kernels


def render(plan: KernelPlan, spec: Spec) -> str:
    return _ENV.get_template(plan.template).render(
        template=plan.template, spec_name=spec.name, spec_hash=spec.hash(), name=plan.name, configs=plan.configs,
        **plan.constants,
    )


def configs_literal(configs: dict, width: int = 120) -> str:
    """The CONFIGS dict of a generated module: one entry point per line (sorted), its config as `dict(KEY=value,
    ...)` on that line, or on the next line(s) when it does not fit in `width` columns."""
    lines = ["{"]
    for entry in sorted(configs):
        config = configs[entry]
        assert entry.isidentifier() and all(key.isidentifier() for key in config), (entry, config)
        key = f'    "{entry}":'
        value = "dict(" + ", ".join(f"{k}={python_literal(config[k])}" for k in sorted(config)) + "),"
        if len(key) + 1 + len(value) <= width:
            lines.append(f"{key} {value}")
        else:
            lines += [key, textwrap.fill(value, width, initial_indent=" " * 8, subsequent_indent=" " * 13,
                                         break_long_words=False, break_on_hyphens=False)]
    return "\n".join(lines + ["}"])


_ENV.filters["configs"] = configs_literal


@contextlib.contextmanager
def no_line_info():
    """Line info would embed the temporary source path in AOT binaries (and break determinism)."""
    previous = os.environ.get("TRITON_DISABLE_LINE_INFO")
    os.environ["TRITON_DISABLE_LINE_INFO"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TRITON_DISABLE_LINE_INFO"]
        else:
            os.environ["TRITON_DISABLE_LINE_INFO"] = previous


def render_modules(plans: list[KernelPlan], spec: Spec, directory: Path, prefix: str = "") -> list:
    """Render every plan into `directory/<name>.py` and import it; [(plan, module)] in plan order."""
    rendered = []
    for plan in plans:
        path = Path(directory) / f"{plan.name}.py"
        path.write_text(render(plan, spec))
        rendered.append((plan, load_module(path, prefix + plan.name)))
    return rendered


def load_module(path: Path, name: str):
    """Import a rendered kernel file (Triton needs the source on disk to compile it)."""
    spec = importlib.util.spec_from_file_location(f"zdiff_generated.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def render_model(spec: Spec, plans: list[KernelPlan], target: str) -> str:
    """The generated torch module (model.py) wired to the rendered kernel modules of `plans`."""
    def one(role: str) -> str | None:
        names = [plan.name for plan in plans if plan.role == role]
        assert len(names) <= 1, f"more than one {role} module: {names}"
        return names[0] if names else None

    norm_modules = {plan.constants["D"]: plan.name for plan in plans if plan.role == "rmsnorm"}
    attention = {plan.constants["layout"]: plan.name for plan in plans if plan.role == "attention"}
    return _ENV.get_template("model.py.jinja").render(
        template="model.py.jinja", spec_name=spec.name, spec_hash=spec.hash(), target=target, plans=plans,
        norm_modules=dict(sorted(norm_modules.items())), residual_module=one("residual_rmsnorm"),
        cca_module=one("cca"), attention_modules=attention,
        moe_route_module=one("moe_router"), moe_experts_module=one("moe_experts"), mlp_module=one("dense_mlp"),
        rope_module=one("qk_rope"),
        block_size=spec.diffusion.block_size, levels=tuple(spec.diffusion.acceptance_levels),
    )
