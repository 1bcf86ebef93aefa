"""Jinja2 templates of the Triton kernels, one file per kernel family, read by zdiff.codegen.render.

Each template starts with a glossary of its symbols; tunables are tl.constexpr; the
rendered file carries a header naming the template and the spec hash.
"""
