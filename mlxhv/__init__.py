"""mlxhv: a hypothesis-validation judge built on MLX and mlx-lm."""

__version__ = "0.1.0"

# Before anything imports mlx.core: put OpenBLAS under MLX's CPU matmuls on Linux (see mlxhv/_blas.py).
from mlxhv import _blas

_blas.enable()
