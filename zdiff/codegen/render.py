"""Render kernel plans through the Jinja2 templates shipped in zdiff/templates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jinja2

from ..spec import Spec
from .plan import KernelPlan

def python_literal(value) -> str:
    """repr with dict keys sorted, so rendered constants never depend on insertion order."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {python_literal(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, (list, tuple)):
        items = ", ".join(python_literal(v) for v in value)
        return f"({items},)" if isinstance(value, tuple) and len(value) == 1 else (f"({items})" if isinstance(value, tuple) else f"[{items}]")
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


def render(plan: KernelPlan, spec: Spec) -> str:
    class_name = "".join(part.capitalize() for part in plan.name.split("_")) + "Function"
    return _ENV.get_template(plan.template).render(
        template=plan.template, spec_name=spec.name, spec_hash=spec.hash(), name=plan.name,
        class_name=class_name, configs=plan.configs, **plan.constants,
    )


def load_module(path: Path, name: str):
    """Import a rendered kernel file (Triton needs the source on disk to compile it)."""
    spec = importlib.util.spec_from_file_location(f"zdiff_generated.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def render_model(spec: Spec, plans: list[KernelPlan], target: str) -> str:
    """The generated torch module (model.py) wired to the rendered kernel modules of `plans`."""
    from .families import cca, moe

    names = {plan.name for plan in plans}
    norm_modules = {plan.constants["D"]: plan.name for plan in plans if plan.template == "rmsnorm.py.jinja"}
    residual = next((plan.name for plan in plans if plan.template == "residual_rmsnorm.py.jinja"), None)
    attention = {plan.constants["layout"]: plan.name for plan in plans if plan.family == "attention"}
    cca_name = cca.plan_name(spec.model.attention) if spec.model.attention.kind == "ccgqa" else None
    assert cca_name is None or cca_name in names
    return _ENV.get_template("model.py.jinja").render(
        template="model.py.jinja", spec_name=spec.name, spec_hash=spec.hash(), target=target, plans=plans,
        norm_modules=dict(sorted(norm_modules.items())), residual_module=residual, cca_module=cca_name,
        attention_modules=attention,
        moe_route_module=moe.router_name(spec), moe_experts_module=moe.experts_name(spec),
        block_size=spec.diffusion.block_size, levels=tuple(spec.diffusion.acceptance_levels),
    )
