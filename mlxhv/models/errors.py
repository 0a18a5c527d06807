"""The model layer's error (defined in mlxhv.errors, under the common root)."""

from mlxhv.errors import ModelLoadError  # noqa: F401
