"""Make MLX fast on Linux CPUs.

The ``mlx[cpu]`` wheel links a reference BLAS that runs a large fp32 matmul at a
few GFLOP/s. When the system OpenBLAS is loaded with RTLD_GLOBAL *before*
``mlx.core`` is imported, MLX's ``sgemm`` calls resolve to OpenBLAS instead
(measured here: ~5 -> ~90-260 GFLOP/s). This module is the one place that does it;
``core/__init__`` calls :func:`preload_blas` so every engine import gets it.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
import warnings

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
)

_state: dict = {"loaded": None, "tried": False}


def find_openblas() -> str | None:
    env = os.environ.get("TUNELOOM_OPENBLAS")
    if env:
        return env if os.path.exists(env) else None
    for path in _CANDIDATES:
        if os.path.exists(path):
            return path
    hits = sorted(glob.glob("/usr/lib*/**/libopenblas*.so*", recursive=True))
    return hits[0] if hits else None


def preload_blas() -> str | None:
    """Load OpenBLAS globally on Linux. Returns its path, or None. Idempotent."""
    if _state["tried"]:
        return _state["loaded"]
    _state["tried"] = True
    if not sys.platform.startswith("linux") or os.environ.get("TUNELOOM_NO_OPENBLAS"):
        return None
    if "mlx.core" in sys.modules:
        warnings.warn("mlx.core was imported before core.accel: OpenBLAS cannot take over its BLAS", stacklevel=2)
    path = find_openblas()
    if path is None:
        warnings.warn(
            "OpenBLAS not found: MLX will use its slow reference BLAS on this CPU. "
            "Install it with: apt-get install libopenblas0-pthread",
            stacklevel=2,
        )
        return None
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:  # a broken library must not stop the app
        warnings.warn(f"Could not load OpenBLAS from {path}: {exc}", stacklevel=2)
        return None
    _state["loaded"] = path
    return path


def blas_status() -> dict:
    return {"platform": sys.platform, "openblas": _state["loaded"], "tried": _state["tried"]}


def matmul_gflops(m: int = 512, k: int = 896, n: int = 4864, repeats: int = 5, clock: str = "wall") -> float:
    """Measure MLX fp32 matmul throughput on the default device, in GFLOP/s: per second of wall time
    (``clock="wall"``), or per CPU second of this process, all its threads together (``"cpu"``: what
    the library does with the CPU it gets, whatever else the machine runs)."""
    import time

    import mlx.core as mx

    now = time.process_time if clock == "cpu" else time.perf_counter
    a = mx.random.normal((m, k))
    b = mx.random.normal((k, n))
    mx.eval(a, b)
    mx.eval(a @ b)  # warm-up
    t0 = now()
    for _ in range(repeats):
        mx.eval(a @ b)
    dt = (now() - t0) / repeats
    return 2.0 * m * k * n / dt / 1e9
