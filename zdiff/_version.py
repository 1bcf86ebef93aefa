"""zdiff's version: a leaf, so that modules inside the package (codegen's provenance) need not import the root."""

__version__ = "0.1.0"
