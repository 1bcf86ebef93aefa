"""TiDAR attention patterns: segments, the three layouts, exact tile classification."""

from .batch import BatchLayout, layout_visible
from .layouts import causal_pattern, decode_pattern, prefill_pattern, training_pattern
from .segments import KeyRange, Pattern, Segment
from .tiles import Tile, classify_tile, dense_tile_map, tile_map
from .visibility import dense_visible, sees_new_key

__all__ = [
    "BatchLayout", "KeyRange", "Pattern", "Segment", "Tile", "causal_pattern", "classify_tile", "decode_pattern",
    "dense_tile_map", "dense_visible", "layout_visible", "prefill_pattern", "sees_new_key", "tile_map",
    "training_pattern",
]
