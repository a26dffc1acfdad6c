"""Tuneloom engine: Qt-free. Importing any part of it first makes MLX fast on Linux."""
from core.accel import preload_blas as _preload_blas

_preload_blas()

__version__ = "0.1.0"
