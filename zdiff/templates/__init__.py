"""Jinja2 templates of the Triton kernels, one file per kernel family (issue #4).

Shipped as package data and read through importlib.resources.
"""
