"""A run folder's file names and the small readers and writers of its JSON parts: the status
(with a reserve for a full disk), a new run's folder, the adapter to use, the latest checkpoint."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from core.atomic import unique_names, write_json
from core.paths import runs_dir

# what makes a folder a run's: a second run must not be written over any of these
RUN_FILES = ("config.json", "status.json", "metrics.jsonl", "adapters.safetensors", "checkpoints")


def new_run_dir(name: str = "run", root: Path | None = None) -> Path:
    root = Path(root) if root else runs_dir()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    root.mkdir(parents=True, exist_ok=True)
    for path in unique_names(root, f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"):
        try:
            path.mkdir()
            return path
        except FileExistsError:  # (taken, also by a run started in the same second elsewhere)
            continue


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return default


STATUS_RESERVE = ".status-reserve"
RESERVE_BYTES = 16384


def make_status_reserve(run_dir: Path) -> None:
    """Set aside room for a last status: a file of RESERVE_BYTES whose blocks are taken now, so that a
    run failing on a full disk can still say so (set_status writes into it in place, then renames)."""
    p = Path(run_dir) / STATUS_RESERVE
    try:
        if p.is_file() and p.stat().st_size >= RESERVE_BYTES:
            return
        with open(p, "wb") as fh:
            fh.write(b" " * RESERVE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        pass  # no room for the reserve either: set_status still tries the plain way


def set_status(run_dir: Path, state: str, **extra) -> None:
    extra.setdefault("pid", os.getpid())
    body = {"state": state, "time": time.time(), **extra}
    try:
        write_json(Path(run_dir) / "status.json", body)
    except OSError:
        if not _status_into_reserve(Path(run_dir), body):
            raise


def finished_before_failure(status: dict) -> str:
    """What to tell people when a process failed after the run had finished and saved itself
    (status ``done``): their adapters are complete, and there is nothing to resume."""
    steps = status.get("steps")
    of = f" after all {steps} steps" if steps else ""
    return (f"The run had finished{of} before that, and its adapters are saved: there is nothing to "
            "resume. Try, evaluate or export it as it is.")


def checkpoint_kept(run_dir: Path) -> str:
    """Where a stopped group run stands, for its error: "The run keeps its checkpoint from step N",
    or that it has none yet (the resume hint follows it)."""
    from core.checkpoints import step_of

    ck = latest_checkpoint(run_dir)
    if ck is None:
        return "The run has no checkpoint yet"
    return f"The run keeps its checkpoint from step {step_of(ck)}"


def _status_into_reserve(run_dir: Path, body: dict) -> bool:
    """Write the status into the reserve's blocks (no new space needed), then rename it to status.json."""
    p = run_dir / STATUS_RESERVE
    data = (json.dumps(body, ensure_ascii=False) + "\n").encode()
    try:
        size = p.stat().st_size
        if len(data) > size:  # cut the error text to fit; the state is what matters
            body = {**body, "error": str(body.get("error", ""))[: max(0, size - 600)]}
            data = (json.dumps(body, ensure_ascii=False) + "\n").encode()
        with open(p, "r+b") as fh:
            fh.write(data + b" " * max(0, size - len(data)))  # trailing spaces: still valid JSON
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(p, run_dir / "status.json")
        return True
    except OSError:
        return False


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


def latest_checkpoint(run_dir: Path) -> Path | None:
    ck = Path(run_dir) / "checkpoints"
    if not ck.exists():
        return None
    done = [d for d in ck.iterdir() if d.is_dir() and (d / "state.json").exists() and d.name.startswith("step-")]
    return max(done, key=lambda d: int(d.name.split("-")[1]), default=None)

CONFIG = "config.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
ADAPTER_CONFIG = "adapter_config.json"
META = "run.json"
EXPORTS = "exports"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
EVALUATION = "evaluation.json"  # the last evaluation's summary (core.report.record_evaluation)
DRIFT = "drift.json"  # the last forgetting check's (core.report.record_evaluation)


def _json_object(path: Path) -> dict:
    """A JSON object file's content; {} when it is missing, unreadable, not JSON or not an object."""
    v = read_json(path, None)
    return v if isinstance(v, dict) else {}
