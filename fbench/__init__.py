"""fbench: expressive 3D face reconstruction research toolkit."""

__version__ = "0.1.0"
