"""The runtime: the reference model (and, from the codegen stage on, the generated one)."""

from .model import ForwardOutput, Transformer, build_model, cast_model, init_weights

__all__ = ["ForwardOutput", "Transformer", "build_model", "cast_model", "init_weights"]
