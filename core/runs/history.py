"""The history of runs: :class:`RunInfo` (a run as the history shows it, with what is damaged), the
runs under ``runs/`` and those remembered elsewhere, a run's title."""
from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.atomic import write_json, write_text
from core.paths import runs_dir
from core.pids import pid_alive
from core.runs.files import read_json
from core.runs.folder import ExportInfo, RunFolder, _best_step
from core.runs.lock import LOCK_NAME, run_locked_by_other
from core.runs.metrics import _number, read_metrics, series

ELSEWHERE = "elsewhere.txt"


_pid_alive = pid_alive  # (the old name)


@dataclass
class RunInfo:
    """A run folder as the history shows it, read from disk."""

    path: Path
    config: dict
    status: dict
    meta: dict = field(default_factory=dict)
    metrics: list[dict] | None = None  # loaded on request (load(..., metrics=True))
    problem: str = ""  # what is wrong with a damaged run folder (its state is then "damaged")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def title(self) -> str:
        return self.meta.get("title") or self.path.name

    @property
    def state(self) -> str:
        if self.problem:
            return "damaged"
        s = self.status.get("state") or ("new" if not self.status else "unknown")
        if s == "running":
            if (self.path / LOCK_NAME).exists():  # the lock says it exactly (a pid can be reused)
                return s if run_locked_by_other(self.path) else "interrupted"
            if not pid_alive(self.status.get("pid")):
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
        t = _number(t) if t is not None else None
        return int(t) if t is not None else None

    @property
    def steps(self) -> int:
        """Optimizer steps done (from the status; from the metrics when they are loaded and further)."""
        s = int(_number(self.status.get("step") or self.status.get("steps") or 0) or 0)
        if self.metrics:
            s = max(s, max((int(_number(m.get("step", 0)) or 0) for m in self.metrics if "train_loss" in m),
                           default=0))
        return s

    @functools.cached_property
    def folder(self) -> RunFolder:
        """The reader of the run's files (adapters, checkpoints, exports, report)."""
        return RunFolder(self.path)

    @property
    def adapters(self) -> Path | None:
        return self.folder.final_adapter

    @property
    def best_step(self) -> int | None:
        """The step of the best adapter (lowest validation loss), when the run kept one."""
        return _best_step(self.status, self.config)

    @property
    def best_adapters(self) -> Path | None:
        return self.folder.best_adapter

    @property
    def checkpoint(self) -> Path | None:
        return self.folder.latest_checkpoint

    @property
    def resumable(self) -> bool:
        return self.state in ("cancelled", "interrupted", "failed", "diverged") and self.checkpoint is not None

    @property
    def error(self) -> str:
        return str(self.status.get("error") or "")

    @property
    def exports(self) -> list[ExportInfo]:
        """The exported files, read once per RunInfo (app.gui.jobs.load_run reads them off the GUI thread)."""
        return self.folder.exports

    def series(self, name: str) -> tuple[list[int], list[float]]:
        if self.metrics is None:
            self.metrics = read_metrics(self.path)
        return series(self.metrics, name)

    @property
    def final_valid_loss(self) -> float | None:
        v = self.status.get("valid_loss")
        if isinstance(v, (int, float)):
            return float(v)
        _, ys = self.series("valid_loss")
        return ys[-1] if ys else None

    @classmethod
    def load(cls, path: Path, metrics: bool = False) -> "RunInfo | None":
        """The run in ``path``; a damaged one (unreadable or ill-formed config.json or status.json) comes
        back with state "damaged" and ``problem`` saying what is wrong. None: no config.json at all."""
        path = Path(path)
        if not (path / "config.json").exists():
            return None
        cfg, problems = _read_part(path / "config.json", required=True)
        status, more = _read_part(path / "status.json")
        problems += more
        meta = read_json(path / "run.json", {})
        meta = meta if isinstance(meta, dict) and isinstance(meta.get("title", ""), str) else {}
        problems += _config_problems(cfg) + _status_problems(status)
        if problems:  # keep what reads well for display, but nothing that would break a reader
            cfg = {k: v for k, v in cfg.items() if k in ("model",) and isinstance(v, str)}
            status = {k: v for k, v in status.items() if k == "state" and isinstance(v, str)}
        info = cls(path, cfg, status, meta, problem="; ".join(problems))
        if metrics:
            info.metrics = read_metrics(path)
        return info


def _read_part(p: Path, required: bool = False) -> tuple[dict, list[str]]:
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return {}, ([f"{p.name} is missing"] if required else [])
    except OSError as exc:
        return {}, [f"{p.name} cannot be read ({exc.strerror or exc})"]
    try:
        v = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return {}, [f"{p.name} is not UTF-8 text (byte {exc.start})"]
    except ValueError as exc:
        return {}, [f"{p.name} is not valid JSON ({exc})"]
    if not isinstance(v, dict):
        return {}, [f"{p.name} holds a {type(v).__name__}, not a JSON object"]
    return v, []


def _config_problems(cfg: dict) -> list[str]:
    out = []
    d = cfg.get("data")
    if d is not None and not isinstance(d, str) and not (isinstance(d, list) and all(isinstance(x, str) for x in d)):
        out.append(f'config.json: "data" is {json.dumps(d)[:40]}, not a list of files')
    if cfg.get("model") is not None and not isinstance(cfg.get("model"), str):
        out.append(f'config.json: "model" is {json.dumps(cfg.get("model"))[:40]}, not a folder')
    for k in ("iters",):
        if cfg.get(k) is not None and _number(cfg.get(k)) is None:
            out.append(f'config.json: "{k}" is {json.dumps(cfg.get(k))[:40]}, not a number')
    return out


def _status_problems(status: dict) -> list[str]:
    out = []
    if "state" in status and not isinstance(status["state"], str):
        out.append(f'status.json: "state" is {json.dumps(status["state"])[:40]}, not a word')
    for k in ("step", "steps", "total", "total_steps", "time", "pid"):
        if status.get(k) is not None and _number(status[k]) is None:
            out.append(f'status.json: "{k}" is {json.dumps(status[k])[:40]}, not a number')
    return out


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
        return [Path(x) for x in (root / ELSEWHERE).read_text(encoding="utf-8", errors="replace").splitlines()
                if x.strip() and "\ufffd" not in x and "\x00" not in x]
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
        try:
            info = RunInfo.load(d, metrics=metrics)
        except Exception as exc:  # noqa: BLE001 - one damaged run never hides the others
            info = RunInfo(Path(d), {}, {}, problem=f"cannot be read ({type(exc).__name__}: {exc})")
        if info is not None:
            out.append(info)
    return out


def set_title(run_dir: Path, title: str) -> None:
    """Rename a run for people; the folder (and every path into it) stays."""
    meta = read_json(Path(run_dir) / "run.json", {}) or {}
    meta["title"] = title.strip()
    write_json(Path(run_dir) / "run.json", meta)
