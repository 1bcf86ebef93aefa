"""Checkpoints: zdiff's own format (spec.yaml + safetensors) and import from transformers."""

from .hf_export import export_hf
from .hf_import import import_hf
from .store import load_model, save_checkpoint

__all__ = ["export_hf", "import_hf", "load_model", "save_checkpoint"]
