"""MLX fp32 matmul on the CPU with the wheel's reference BLAS vs the system OpenBLAS.

    .venv/bin/python bench/blas_matmul.py

Each case runs in a fresh process, because the BLAS is chosen when mlx.core is imported.
"""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASE = """
import sys, json
sys.path.insert(0, {root!r})
import core
from core.accel import blas_status, matmul_gflops
print(json.dumps({{"openblas": blas_status()["openblas"], "gflops": matmul_gflops(512, 896, 4864, repeats=5)}}))
"""


def run(preload: bool) -> dict:
    env = dict(os.environ)
    if not preload:
        env["TUNELOOM_NO_OPENBLAS"] = "1"
    out = subprocess.run([sys.executable, "-c", CASE.format(root=str(ROOT))], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ref = run(False)
    fast = run(True)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.platform()}")
    print("matmul 512x896 @ 896x4864, fp32, MLX CPU")
    print(f"  reference BLAS (as installed): {ref['gflops']:8.1f} GFLOP/s")
    print(f"  system OpenBLAS ({fast['openblas']}): {fast['gflops']:8.1f} GFLOP/s")
    print(f"  speed-up: {fast['gflops'] / ref['gflops']:.0f}x")


if __name__ == "__main__":
    main()
