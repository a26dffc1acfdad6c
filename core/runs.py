"""Every training run is a folder; history, comparison and resume come from disk.

Layout of ``runs/<timestamp>-<name>/``::

    config.json            everything needed to reproduce the run (TrainConfig)
    metrics.jsonl          one JSON object per report, appended as it goes
    adapters.safetensors   latest adapter weights, mlx-lm layout (the final one when the run is done)
    adapters_best.safetensors  the adapter at the lowest validation loss so far (``best_step`` in
                           config.json and status.json); Try, Evaluate and Export use it by default
    adapter_config.json    what mlx_lm.load(..., adapter_path=run_dir) reads
    checkpoints/step-N/    adapters + optimizer state + step + RNG state
    status.json            running / done / cancelled / failed, with a summary (and the pid while running)
    run.json               what people gave the run: its title
    exports/               GGUF files and Modelfiles made from this run (and a JSON record per export)
    report.json, report.md the run's report card (core.report)

Runs written outside ``runs/`` (``tuneloom train --out DIR``) are remembered in
``runs/elsewhere.txt`` so the history shows them too.
"""
from __future__ import annotations

import functools

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.atomic import write_json, write_text
from core.paths import runs_dir

ELSEWHERE = "elsewhere.txt"
# states a run folder can be in (status.json's "state"; "interrupted": said "running" but its process is gone)
STATES = ("running", "done", "cancelled", "failed", "interrupted", "new")


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


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return default


def set_status(run_dir: Path, state: str, **extra) -> None:
    extra.setdefault("pid", os.getpid())
    write_json(Path(run_dir) / "status.json", {"state": state, "time": time.time(), **extra})


BEST_ADAPTERS = "adapters_best.safetensors"
FINAL_ADAPTERS = "adapters.safetensors"


def adapter_file(run_dir: Path, which: str = "best") -> Path:
    """The adapter weights to use: ``which`` "best" (lowest validation loss; the final one when the
    run has no best, e.g. it never validated or predates best checkpoints) or "final"."""
    if which not in ("best", "final"):
        raise ValueError(f"which must be 'best' or 'final', not {which!r}")
    run_dir = Path(run_dir)
    best = run_dir / BEST_ADAPTERS
    if which == "best" and best.is_file():
        return best
    return run_dir / FINAL_ADAPTERS


def update_json(path: Path, **values) -> None:
    """Set keys in a JSON object file (created when missing), atomically."""
    data = read_json(path, {}) or {}
    if not isinstance(data, dict):
        data = {}
    data.update(values)
    write_json(Path(path), data)


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


def series(metrics: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, one value per step (the last written wins)."""
    by_step: dict[int, float] = {}
    for m in metrics:
        v = m.get(name)
        if isinstance(v, (int, float)):
            by_step[int(m.get("step", 0))] = float(v)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _pid_alive(pid) -> bool:
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def latest_checkpoint(run_dir: Path) -> Path | None:
    ck = Path(run_dir) / "checkpoints"
    if not ck.exists():
        return None
    done = [d for d in ck.iterdir() if d.is_dir() and (d / "state.json").exists() and d.name.startswith("step-")]
    return max(done, key=lambda d: int(d.name.split("-")[1]), default=None)


@dataclass
class ExportInfo:
    """One file made from the run (a GGUF, a Modelfile), with its record when the exporter wrote one."""

    path: Path
    kind: str  # "gguf" / "modelfile"
    size: int = 0
    time: float = 0.0
    record: dict = field(default_factory=dict)  # exports/*.json: quant, Ollama name, ...


@dataclass
class RunInfo:
    """A run folder as the history shows it, read from disk."""

    path: Path
    config: dict
    status: dict
    meta: dict = field(default_factory=dict)
    metrics: list[dict] | None = None  # loaded on request (load(..., metrics=True))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def title(self) -> str:
        return self.meta.get("title") or self.path.name

    @property
    def state(self) -> str:
        s = self.status.get("state") or ("new" if not self.status else "unknown")
        if s == "running" and not _pid_alive(self.status.get("pid")):
            return "interrupted"  # the process that trained it is gone (a crash, a kill)
        return s

    @property
    def created(self) -> float:
        m = re.match(r"(\d{8})-(\d{6})", self.path.name)
        if m:
            try:
                return time.mktime(time.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S"))
            except ValueError:
                pass
        try:
            return (self.path / "config.json").stat().st_mtime
        except OSError:
            return 0.0

    @property
    def base_model(self) -> str:
        return str(self.config.get("model") or "")

    @property
    def dataset(self) -> list[str]:
        d = self.config.get("data") or []
        return [d] if isinstance(d, str) else [str(x) for x in d]

    @property
    def total_steps(self) -> int | None:
        t = self.status.get("total") or self.status.get("total_steps") or self.status.get("steps")
        if t is None and self.config.get("iters"):
            t = self.config["iters"]
        return int(t) if t is not None else None

    @property
    def steps(self) -> int:
        """Optimizer steps done (from the status; from the metrics when they are loaded and further)."""
        s = int(self.status.get("step") or self.status.get("steps") or 0)
        if self.metrics:
            s = max(s, max((int(m.get("step", 0)) for m in self.metrics if "train_loss" in m), default=0))
        return s

    @property
    def adapters(self) -> Path | None:
        p = self.path / "adapters.safetensors"
        return p if p.exists() else None

    @property
    def best_step(self) -> int | None:
        """The step of the best adapter (lowest validation loss), when the run kept one."""
        for d in (self.status, self.config):
            v = d.get("best_step")
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        return None

    @property
    def best_adapters(self) -> Path | None:
        p = self.path / BEST_ADAPTERS
        return p if p.exists() else None

    @property
    def checkpoint(self) -> Path | None:
        return latest_checkpoint(self.path)

    @property
    def resumable(self) -> bool:
        return self.state in ("cancelled", "interrupted", "failed") and self.checkpoint is not None

    @property
    def error(self) -> str:
        return str(self.status.get("error") or "")

    @functools.cached_property
    def exports(self) -> list[ExportInfo]:
        """The exported files, read once per RunInfo (app.gui.jobs.load_run reads them off the GUI thread)."""
        d = self.path / "exports"
        if not d.is_dir():
            return []
        records = {}
        for j in d.glob("*.json"):
            rec = read_json(j, {}) or {}
            for key in ("gguf", "path", "file"):
                if rec.get(key):
                    records[Path(rec[key]).name] = rec
        out = []
        for p in sorted(d.iterdir()):
            kind = "gguf" if p.suffix == ".gguf" else ("modelfile" if p.name.startswith("Modelfile") else "")
            if not kind or not p.is_file():
                continue
            st = p.stat()
            out.append(ExportInfo(p, kind, st.st_size, st.st_mtime, records.pop(p.name, {})))
        # GGUFs written elsewhere (`tuneloom export RUN --gguf ANYWHERE`), while they are still there
        listed = {e.path for e in out}
        for rec in records.values():
            p = Path(str(rec.get("gguf") or ""))
            if p.suffix == ".gguf" and p not in listed and p.is_file():
                listed.add(p)
                st = p.stat()
                out.append(ExportInfo(p, "gguf", st.st_size, st.st_mtime, rec))
        return out

    def series(self, name: str) -> tuple[list[int], list[float]]:
        if self.metrics is None:
            self.metrics = read_metrics(self.path)
        return series(self.metrics, name)

    @property
    def final_train_loss(self) -> float | None:
        _, ys = self.series("train_loss")
        return ys[-1] if ys else None

    @property
    def final_valid_loss(self) -> float | None:
        v = self.status.get("valid_loss")
        if isinstance(v, (int, float)):
            return float(v)
        _, ys = self.series("valid_loss")
        return ys[-1] if ys else None

    @classmethod
    def load(cls, path: Path, metrics: bool = False) -> "RunInfo | None":
        path = Path(path)
        cfg = read_json(path / "config.json")
        if not isinstance(cfg, dict):
            return None
        info = cls(path, cfg, read_json(path / "status.json", {}) or {}, read_json(path / "run.json", {}) or {})
        if metrics:
            info.metrics = read_metrics(path)
        return info


def remember(run_dir: Path, root: Path | None = None) -> None:
    """Note a run folder outside ``runs/`` so that the history lists it."""
    root = Path(root) if root else runs_dir()
    run_dir = Path(run_dir).resolve()
    try:
        if run_dir.parent == root.resolve():
            return
    except OSError:
        return
    root.mkdir(parents=True, exist_ok=True)
    listed = _elsewhere(root)
    if run_dir not in listed:
        write_text(root / ELSEWHERE, "".join(f"{p}\n" for p in listed + [run_dir]))


def _elsewhere(root: Path) -> list[Path]:
    try:
        return [Path(x) for x in (root / ELSEWHERE).read_text(encoding="utf-8").splitlines() if x.strip()]
    except OSError:
        return []


def run_dirs(root: Path | None = None) -> list[Path]:
    """Every run folder the history shows: those under ``runs/`` and those remembered elsewhere, newest first."""
    root = Path(root) if root else runs_dir()
    found = []
    if root.exists():
        found = [d for d in root.iterdir() if d.is_dir() and (d / "config.json").exists()]
    found += [d for d in _elsewhere(root) if d.is_dir() and (d / "config.json").exists() and d not in found]
    def made(d: Path) -> float:
        try:
            return (d / "config.json").stat().st_mtime
        except OSError:
            return 0.0

    return sorted(found, key=lambda d: (made(d), d.name), reverse=True)


def list_runs(root: Path | None = None, metrics: bool = False) -> list[RunInfo]:
    out = []
    for d in run_dirs(root):
        info = RunInfo.load(d, metrics=metrics)
        if info is not None:
            out.append(info)
    return out


def set_title(run_dir: Path, title: str) -> None:
    """Rename a run for people; the folder (and every path into it) stays."""
    meta = read_json(Path(run_dir) / "run.json", {}) or {}
    meta["title"] = title.strip()
    write_json(Path(run_dir) / "run.json", meta)
