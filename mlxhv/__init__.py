"""mlxhv: a hypothesis-validation judge built on MLX and mlx-lm."""

__version__ = "0.1.0"
