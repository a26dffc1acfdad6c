"""Every training run is a folder; history, comparison and resume come from disk.

Layout of ``runs/<timestamp>-<name>/`` (read by :class:`RunFolder`, the one reader)::

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
    evaluation.json, drift.json  the last evaluation and forgetting check (the report card shows them)

Runs written outside ``runs/`` (``tuneloom train --out DIR``) are remembered in
``runs/elsewhere.txt`` so the history shows them too.
"""
from __future__ import annotations

import contextlib
import functools

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.atomic import write_json, write_text
from core.events import TuneloomError
from core.paths import runs_dir

try:
    import fcntl
except ImportError:  # not on Windows, which Tuneloom does not run on; no lock there
    fcntl = None

ELSEWHERE = "elsewhere.txt"
# the file whose OS lock (flock) says a process is writing the run; the lock dies with the process
LOCK_NAME = ".lock"
# what makes a folder a run's: a second run must not be written over any of these
RUN_FILES = ("config.json", "status.json", "metrics.jsonl", "adapters.safetensors", "checkpoints")


class RunFolderTaken(TuneloomError):
    """The folder holds another run, or another process is writing it."""


class RunFinished(TuneloomError):
    """``--resume`` of a run that has done all its steps: there is nothing to train."""


def _lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK_NAME


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the process writing ``run_dir`` (as it wrote it in the lock file; 0 if unreadable), or
    None when no process holds the run's lock. Reads only: no file is made."""
    if fcntl is None:
        return None
    try:
        fd = os.open(_lock_path(run_dir), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            try:
                return int(os.read(fd, 32).decode("ascii", "replace").split()[0])
            except (OSError, ValueError, IndexError):
                return 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def run_locked_by_other(run_dir: Path) -> bool:
    """Whether a process (another one, or another writer in this one) is writing ``run_dir`` now: the
    GUI shows such a run as being trained and starts no second writer on it. Qt-free, reads only."""
    return lock_holder(run_dir) is not None


LOCK_ATTEMPTS = 20  # a reader's shared lock lasts an instant; a writer's, the whole run


class RunLock:
    """An exclusive OS lock on a run folder, held while this process writes it.

    ``flock`` on ``RUN/.lock``: the kernel drops it when the process ends however it ends (a kill, a
    crash), so a dead run never leaves a stale lock. The file stays (removing it would race)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        if fcntl is None:
            return self
        fd = os.open(_lock_path(self.run_dir), os.O_RDWR | os.O_CREAT, 0o666)
        for attempt in range(LOCK_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                # a reader looking (lock_holder: the window's History and Export pages) holds a shared lock
                # for an instant; only a lock still held by a writer means another process trains the run
                if attempt + 1 < LOCK_ATTEMPTS and lock_holder(self.run_dir) is None:
                    time.sleep(0.01)
                    continue
                os.close(fd)
                pid = lock_holder(self.run_dir)
                raise RunFolderTaken(
                    f"{self.run_dir} is being trained by another process"
                    + (f" (pid {pid})" if pid else "") + ".",
                    "Wait until it ends, or stop it first; give a new run a folder of its own (another --out).")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def run_contents(run_dir: Path) -> list[str]:
    """The files of a run that ``run_dir`` already holds (empty for a new or an empty folder)."""
    d = Path(run_dir)
    return [n for n in RUN_FILES if (d / n).exists()] if d.is_dir() else []


@contextlib.contextmanager
def claim_run(run_dir: Path, resume: bool = False):
    """Hold ``run_dir`` for this process while the block writes it.

    A new run (``resume=False``) is refused, before anything in the folder changes, when the folder
    already holds a run (its config, status, metrics, adapters or checkpoints), with the fix; a run
    another process is writing is refused at once. The lock is released when the block ends."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderTaken(f"{run_dir} is a file, not a folder.", "Give the run a folder of its own (--out).")

    def refuse_taken():
        found = run_contents(run_dir)
        if found:
            st = read_json(run_dir / "status.json", {})
            state = st.get("state") if isinstance(st, dict) else None
            raise RunFolderTaken(
                f"{run_dir} already holds a run ({', '.join(found)}"
                + (f"; {state}" if isinstance(state, str) else "") + "); a new run would mix with it.",
                f"Give the new run another folder (--out NEW_FOLDER, or leave --out out), or continue that run "
                f"with `tuneloom train --resume {run_dir}`.")

    if not resume:
        if lock_holder(run_dir) is not None:
            RunLock(run_dir).acquire()  # raises: being trained by another process
        refuse_taken()
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        raise RunFolderTaken(f"{run_dir} does not exist.", "Pick a run folder under runs/ (tuneloom runs).")
    lock = RunLock(run_dir).acquire()
    try:
        if not resume:
            refuse_taken()  # another process may have started one between the check and the lock
        else:
            from core.checkpoints import clean_partial

            clean_partial(run_dir)  # what an interrupted checkpoint write left
        make_status_reserve(run_dir)
        yield lock
    finally:
        lock.release()


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


def read_metrics(run_dir: Path) -> list[dict]:
    """Every complete line of metrics.jsonl (a torn last line from a crash is ignored)."""
    out = []
    p = Path(run_dir) / "metrics.jsonl"
    try:
        raw = p.read_bytes()
    except OSError:
        return out
    # a damaged line (a torn write, a stray byte) is skipped; the others are read as usual
    for line in raw.splitlines():
        try:
            m = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(m, dict) and _number(m.get("step", 0)) is not None:
            out.append(m)
    return out


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            v = float(v)
        except (TypeError, ValueError):
            return None
    return float(v) if v == v and abs(v) != float("inf") else None


def series(metrics: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, one value per step (the last written wins)."""
    by_step: dict[int, float] = {}
    for m in metrics:
        v = m.get(name)
        step = _number(m.get("step", 0))
        if isinstance(v, (int, float)) and not isinstance(v, bool) and step is not None:
            by_step[int(step)] = float(v)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def smoothed(values, weight: float) -> list[float]:
    """Exponential moving average with the start-up bias removed (as TensorBoard and Adam do): the first
    value is not taken as the average of everything before it, so the line does not start at one raw value."""
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        acc = weight * acc + (1 - weight) * float(v)
        norm = weight * norm + (1 - weight)
        out.append(acc / norm if norm else float(v))
    return out


@dataclass
class LossSummary:
    """How a run's loss moved, like with like: ``first`` and ``last`` are the same kind of figure."""

    kind: str  # "validation" (measured on held-out examples) or "training" (smoothed over a window)
    first: float
    last: float
    first_step: int
    last_step: int
    window: int = 1  # training: steps averaged at each end

    @property
    def fell(self) -> bool:
        return self.last < self.first

    def words(self) -> str:
        """'validation loss 5.95 → 2.68' / 'training loss 3.10 → 1.20 (smoothed over 20 steps at each end)'."""
        text = f"{self.kind} loss {self.first:.3f} → {self.last:.3f}"
        if self.kind == "training" and self.window > 1:
            text += f" (smoothed over {self.window} steps at each end)"
        return text


def summary_window(n: int) -> int:
    """Steps smoothed at each end of a run of ``n`` steps: a fifth of it, 8 to 100, at most half."""
    return max(1, min(n // 2, max(8, min(100, n // 5))))


def loss_summary(metrics: list[dict]) -> LossSummary | None:
    """The run's loss at its start and its end. The validation loss first, when it was measured twice or
    more (it is measured on the same held-out examples each time); otherwise the training loss, smoothed
    with bias correction over the same number of steps at each end. A raw first value would mislead: with
    length-grouped batches the raw loss can alternate between examples the model already knows (~0) and
    new ones (3-7), so one step says little."""
    vs, vv = series(metrics, "valid_loss")
    if len(vv) >= 2:
        return LossSummary("validation", vv[0], vv[-1], vs[0], vs[-1])
    ts, tv = series(metrics, "train_loss")
    if not tv:
        return None
    w = summary_window(len(tv))
    weight = 1.0 - 2.0 / (w + 1)  # an average over about w steps
    return LossSummary("training", smoothed(tv[:w], weight)[-1], smoothed(tv[-w:], weight)[-1], ts[0], ts[-1], w)


def learning_problems(summary: LossSummary | None, steps: int, warmup: int = 0, min_steps: int = 30) -> list[str]:
    """Why a finished run probably learned little, in words (empty: nothing to say)."""
    out = []
    if steps < min_steps:
        out.append(f"only {steps} steps: too short to learn much (at least {min_steps} is a sensible minimum)")
    if warmup and warmup >= steps:
        out.append(f"the warm-up ({warmup} steps) was as long as the run, so the learning rate never reached "
                   "its full value")
    if summary is None:
        out.append("no loss was recorded")
    elif not summary.fell:
        out.append(f"the {summary.kind} loss did not fall ({summary.first:.3f} → {summary.last:.3f})")
    return out


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


@dataclass(frozen=True)
class AdapterChoice:
    """One of a run's adapters, as the Try and Export pages offer it (:func:`adapter_choices`)."""

    which: str  # "best" / "final": what adapter_file(run_dir, which) takes
    label: str  # what a person reads in the list
    step: int | None  # the optimizer step it is from, when known
    path: Path | None  # the weights file it loads (None: the run has none yet)


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


class RunFolder:
    """The one reader of a run folder (the layout is in the module docstring).

    Each part is read once, when first asked for, and forgiving: a missing or damaged JSON file reads as
    {} and a damaged metrics line is skipped, so callers decide what a missing part means to them (their
    own errors). :class:`RunInfo` (the history's view, which also says what is damaged) builds on it.
    Nothing here writes."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- the files ---------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def exports_dir(self) -> Path:
        return self.path / EXPORTS

    @property
    def report_json_path(self) -> Path:
        return self.path / REPORT_JSON

    @property
    def report_md_path(self) -> Path:
        return self.path / REPORT_MD

    @property
    def is_run(self) -> bool:
        """Whether the folder has a config.json (what makes it a run's, for history and the readers)."""
        return self.config_path.is_file()

    # -- the JSON parts ------------------------------------------------------------------------------
    @functools.cached_property
    def config(self) -> dict:
        """config.json (the TrainConfig the run was made with); {} when missing or damaged."""
        return _json_object(self.config_path)

    @functools.cached_property
    def status(self) -> dict:
        """status.json (state, step, summary); {} when missing or damaged."""
        return _json_object(self.path / STATUS)

    @functools.cached_property
    def adapter_config(self) -> dict:
        """adapter_config.json (what mlx_lm.load reads); {} when missing or damaged."""
        return _json_object(self.path / ADAPTER_CONFIG)

    @functools.cached_property
    def meta(self) -> dict:
        """run.json (what people gave the run: its title); {} when missing or damaged."""
        m = _json_object(self.path / META)
        return m if isinstance(m.get("title", ""), str) else {}

    @functools.cached_property
    def metrics(self) -> list[dict]:
        """Every complete line of metrics.jsonl (see :func:`read_metrics`)."""
        return read_metrics(self.path)

    @functools.cached_property
    def report(self) -> dict:
        """report.json (core.report's report card); {} when it was not written."""
        return _json_object(self.report_json_path)

    @functools.cached_property
    def evaluation(self) -> dict | None:
        """evaluation.json (the last evaluation's summary, for the report card); None when there is none."""
        v = read_json(self.path / EVALUATION)
        return v if isinstance(v, dict) else None

    @functools.cached_property
    def forgetting(self) -> dict | None:
        """drift.json (the last forgetting check's result); None when there is none."""
        v = read_json(self.path / DRIFT)
        return v if isinstance(v, dict) else None

    def report_text(self) -> str | None:
        """report.md (the report card in words); None when it was not written or cannot be read."""
        try:
            return self.report_md_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    @property
    def base_model(self) -> str:
        """The base model folder the run was trained on ('' when the folder does not say)."""
        base = self.adapter_config.get("base_model") or self.config.get("model")
        return base if isinstance(base, str) else ""

    def system_prompt(self) -> str | None:
        """The run's own system prompt setting (config "system" or "system_prompt"), when it has one."""
        for k in ("system", "system_prompt"):
            if isinstance(self.config.get(k), str) and self.config[k].strip():
                return self.config[k]
        return None

    # -- steps and adapters ------------------------------------------------------------------------
    @property
    def best_step(self) -> int | None:
        """The step of the best adapter (lowest validation loss), when the run kept one."""
        return _best_step(self.status, self.config)

    @property
    def last_step(self) -> int | None:
        """The last optimizer step done: from the status, or else from the metrics (None: no step known)."""
        s = int(_number(self.status.get("step") or self.status.get("steps") or 0) or 0)
        if not s:
            s = max((int(_number(m.get("step", 0)) or 0) for m in self.metrics if "train_loss" in m), default=0)
        return s or None

    @property
    def final_adapter(self) -> Path | None:
        """adapters.safetensors (the latest weights; the final ones once the run is done), when there."""
        p = self.path / FINAL_ADAPTERS
        return p if p.exists() else None

    @property
    def best_adapter(self) -> Path | None:
        """adapters_best.safetensors (the weights at the lowest validation loss), when the run kept it."""
        p = self.path / BEST_ADAPTERS
        return p if p.exists() else None

    @property
    def has_adapter(self) -> bool:
        """Whether an adapter can be loaded from the folder (adapters.safetensors + adapter_config.json)."""
        return (self.path / FINAL_ADAPTERS).is_file() and (self.path / ADAPTER_CONFIG).is_file()

    def adapter(self, which: str = "best") -> Path:
        """The weights file for ``which`` ("best" or "final"): see :func:`adapter_file`."""
        return adapter_file(self.path, which)

    def adapter_choices(self) -> list[AdapterChoice]:
        """The best and the final adapter, with their labels and steps (:func:`adapter_choices`)."""
        final = self.final_adapter
        # the final adapter's step is known once the run is done; a stopped run's is the latest it saved
        final_step = self.last_step if final is not None and self.status.get("state") == "done" else None
        best, best_step = self.best_adapter, self.best_step
        if best is not None:
            best_choice = AdapterChoice("best", "Best adapter (lowest validation loss"
                                        + (f", step {best_step})" if best_step is not None else ")"), best_step, best)
        elif final is not None:  # no best kept (never validated, or an older run): "best" loads the final one
            best_choice = AdapterChoice("best", "Best adapter (none kept: the final one)", final_step, final)
        else:
            best_choice = AdapterChoice("best", "Best adapter (lowest validation loss)", None, None)
        if final is None:
            final_label = "Final adapter (the last step)"
        elif final_step is not None:
            final_label = f"Final adapter (the last step, step {final_step})"
        else:
            final_label = "Final adapter (the latest saved)"
        return [best_choice, AdapterChoice("final", final_label, final_step, final)]

    # -- checkpoints and exports ---------------------------------------------------------------------
    @property
    def checkpoints(self) -> list[Path]:
        """The complete checkpoints (checkpoints/step-N/ with a state.json), oldest first."""
        ck = self.path / "checkpoints"
        try:
            done = [d for d in ck.iterdir()
                    if d.is_dir() and d.name.startswith("step-") and (d / "state.json").exists()]
        except OSError:
            return []
        return sorted(done, key=lambda d: int(d.name.split("-")[1]) if d.name.split("-")[1].isdigit() else -1)

    @property
    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.path)

    def export_record(self, name: str) -> dict:
        """exports/NAME (a JSON record an exporter wrote there); {} when missing or damaged."""
        return _json_object(self.exports_dir / name)

    def export_records(self) -> list[dict]:
        """Every JSON record in exports/ (one per export, and quant_price.json), by file name; a damaged
        one is left out (the file it named is still listed by :attr:`exports`, without it)."""
        try:
            files = sorted(self.exports_dir.glob("*.json"))
        except OSError:
            return []
        return [rec for rec in (read_json(j) for j in files) if isinstance(rec, dict)]

    @functools.cached_property
    def exports(self) -> list[ExportInfo]:
        """The exported files, read once (app.gui.jobs.load_run reads them off the GUI thread)."""
        d = self.exports_dir
        if not d.is_dir():
            return []
        records = {}
        for rec in self.export_records():
            for key in ("gguf", "path", "file"):
                if isinstance(rec.get(key), str) and rec.get(key):
                    records[Path(rec[key]).name] = rec
        out = []
        for p in sorted(d.iterdir()):
            kind = "gguf" if p.suffix == ".gguf" else (
                "modelfile" if p.name.startswith("Modelfile") or p.name.endswith(".Modelfile") else "")
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


def _best_step(status: dict, config: dict) -> int | None:
    for d in (status, config):
        v = d.get("best_step")
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def adapter_choices(run_dir: Path | None) -> list[AdapterChoice]:
    """The adapters a person picks between on the Try and Export pages: "best" (lowest validation loss;
    the final one when the run kept none) and "final" (the last step), in that order, labelled with their
    steps. ``run_dir`` None (no run yet): the same two choices without steps."""
    if run_dir is None:
        return [AdapterChoice("best", "Best adapter (lowest validation loss)", None, None),
                AdapterChoice("final", "Final adapter (the last step)", None, None)]
    return RunFolder(run_dir).adapter_choices()


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
            if not _pid_alive(self.status.get("pid")):
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
