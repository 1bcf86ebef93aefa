"""TiDAR attention patterns: segments, the three layouts, exact tile classification."""

from .batch import BatchLayout
from .layouts import causal_pattern, decode_pattern, prefill_pattern, training_pattern
from .segments import KeyRange, Pattern, Segment
from .tiles import Tile, classify_tile, dense_tile_map, tile_map

__all__ = [
    "BatchLayout", "KeyRange", "Pattern", "Segment", "Tile", "causal_pattern", "classify_tile", "decode_pattern", "dense_tile_map",
    "prefill_pattern", "tile_map", "training_pattern",
]
