"""rap: 3D rasterization augmented end-to-end planning."""

__version__ = "0.1.0"
