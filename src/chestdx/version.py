"""The package version, in a module of its own so that any module can read it without importing
the ``chestdx`` package's lazy API (``chestdx.load_model``)."""

__version__ = "0.1.0"
