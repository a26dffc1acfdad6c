"""Every training run is a folder; history, comparison and resume come from disk.

Layout of ``runs/<timestamp>-<name>/``::

    config.json            everything needed to reproduce the run (TrainConfig)
    metrics.jsonl          one JSON object per report, appended as it goes
    adapters.safetensors   latest adapter weights, mlx-lm layout
    adapter_config.json    what mlx_lm.load(..., adapter_path=run_dir) reads
    checkpoints/step-N/    adapters + optimizer state + step + RNG state
    status.json            running / done / cancelled / failed, with a summary
    exports/               GGUF files and Modelfiles made from this run
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from core.atomic import write_json
from core.paths import runs_dir


def new_run_dir(name: str = "run", root: Path | None = None) -> Path:
    root = Path(root) if root else runs_dir()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{stamp}-{slug}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{slug}-{n}"
    path.mkdir(parents=True)
    return path


@dataclass
class RunInfo:
    path: Path
    config: dict
    status: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state(self) -> str:
        return self.status.get("state", "unknown")


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def set_status(run_dir: Path, state: str, **extra) -> None:
    write_json(Path(run_dir) / "status.json", {"state": state, "time": time.time(), **extra})


def read_metrics(run_dir: Path) -> list[dict]:
    """Every complete line of metrics.jsonl (a torn last line from a crash is ignored)."""
    out = []
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def list_runs(root: Path | None = None) -> list[RunInfo]:
    root = Path(root) if root else runs_dir()
    if not root.exists():
        return []
    runs = []
    for d in sorted(root.iterdir(), reverse=True):
        if d.is_dir() and (d / "config.json").exists():
            runs.append(RunInfo(d, read_json(d / "config.json", {}), read_json(d / "status.json", {})))
    return runs


def latest_checkpoint(run_dir: Path) -> Path | None:
    ck = Path(run_dir) / "checkpoints"
    if not ck.exists():
        return None
    done = [d for d in ck.iterdir() if d.is_dir() and (d / "state.json").exists() and d.name.startswith("step-")]
    return max(done, key=lambda d: int(d.name.split("-")[1]), default=None)
