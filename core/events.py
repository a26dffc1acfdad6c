"""The one protocol every long job in ``core`` speaks.

A job is a plain function ``job(..., events=None, cancel=None) -> result``. While it
runs it reports through ``events`` (progress, metric, log) and polls ``cancel``.
It ends by returning its result or raising a :class:`TuneloomError` subclass;
:func:`run_job` turns that ending into ``events.done(result)`` or
``events.failed(error)`` for front ends that prefer callbacks (the Qt workers).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


class TuneloomError(Exception):
    """An error a user can act on: ``str(err)`` says what happened, ``hint`` what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint

    def user_message(self) -> str:
        msg = str(self)
        return f"{msg}\n{self.hint}" if self.hint else msg


class Cancelled(TuneloomError):
    """The user cancelled the job; whatever was safe to keep has been kept."""

    def __init__(self, message: str = "cancelled", hint: str = "", result: Any = None):
        super().__init__(message, hint)
        self.result = result


@dataclass(frozen=True)
class Progress:
    """How far a job is, with explicit fields (no front end parses ``what``)."""

    done: float | None  # None: not known yet
    total: float | None  # None: unknown
    unit: str = ""  # "step", "byte", "example", ...
    what: str = ""  # one line for people
    rate: float | None = None  # units per second
    eta: float | None = None  # seconds left
    item: str = ""  # what it works on now (a download's file name), for a front end's label


@dataclass(frozen=True)
class StepReport:
    """One optimizer step of a training run."""

    step: int
    total: int
    epoch: float  # fractional passes over the training data so far
    train_loss: float
    learning_rate: float
    tokens_per_sec: float
    trained_tokens: int  # tokens the loss was computed on, since the run began (over resumes)
    peak_memory: float  # bytes (0 where the backend does not say)
    elapsed: float  # seconds spent training, over resumes, pauses excluded
    eta_seconds: float  # at the current pace
    trained_tokens_per_sec: float = 0.0
    trained_tokens_step: int = 0

    # the metrics one step has always reported through Events.metric (the CLI prints these)
    LEGACY_METRICS = ("train_loss", "learning_rate", "tokens_per_sec", "trained_tokens_per_sec", "trained_tokens",
                      "trained_tokens_step", "peak_memory")


class Events:
    """Sink for job reports. Subclass and override what you need; defaults ignore.

    The typed reports (:meth:`step`, :meth:`report_progress`) fall back to the plain calls
    (:meth:`metric`, :meth:`progress`), so a sink written for those sees them too."""

    def progress(self, done: float, total: float | None, what: str) -> None:
        pass

    def report_progress(self, p: Progress) -> None:
        self.progress(p.done, p.total, p.what)

    def step(self, r: StepReport) -> None:
        for name in StepReport.LEGACY_METRICS:
            self.metric(name, r.step, float(getattr(r, name)))

    def state(self, state: str, step: int | None = None) -> None:
        """The job changed state on its own thread: "paused" (parked, computing nothing), "running"."""

    def metric(self, name: str, step: int, value: float) -> None:
        pass

    def log(self, level: str, text: str) -> None:
        pass

    def stage(self, name: str) -> None:
        """A named stage of the job begins ("fuse", "gguf", "upload", ...). A sink that knows only
        :meth:`log` sees ``log("stage", name)``."""
        self.log("stage", name)

    def stage_done(self, name: str, ok: bool | None = True, seconds: float | None = None,
                   detail: dict | None = None) -> None:
        """A named stage ended: ``ok`` True (passed), False (failed) or None (skipped), the seconds it took
        and its figures (``detail``: name -> number or short text). A sink that knows only :meth:`log`
        sees ``log("stage-done", name)``."""
        self.log("stage-done", name)

    def done(self, result: Any) -> None:
        pass

    def failed(self, error: BaseException) -> None:
        pass


NULL_EVENTS = Events()


class StageClock:
    """Times the named stages of one job and reports them typed (:meth:`Events.stage` / :meth:`Events.stage_done`)."""

    def __init__(self, events: Events | None):
        self.events = events or NULL_EVENTS
        self._t0: dict[str, float] = {}

    def start(self, name: str) -> None:
        self._t0[name] = time.perf_counter()
        self.events.stage(name)

    def done(self, name: str, ok: bool | None = True, **detail) -> float:
        """Report ``name`` ended; returns its seconds (since :meth:`start`; 0 when it was never started)."""
        t0 = self._t0.pop(name, None)
        seconds = round(time.perf_counter() - t0, 3) if t0 is not None else 0.0
        self.events.stage_done(name, ok, seconds, detail or None)
        return seconds


class CallbackEvents(Events):
    """Events built from plain callables (any may be None)."""

    def __init__(self, progress=None, metric=None, log=None, done=None, failed=None):
        self._cb = {"progress": progress, "metric": metric, "log": log, "done": done, "failed": failed}

    def progress(self, done, total, what):
        if self._cb["progress"]:
            self._cb["progress"](done, total, what)

    def metric(self, name, step, value):
        if self._cb["metric"]:
            self._cb["metric"](name, step, value)

    def log(self, level, text):
        if self._cb["log"]:
            self._cb["log"](level, text)

    def done(self, result):
        if self._cb["done"]:
            self._cb["done"](result)

    def failed(self, error):
        if self._cb["failed"]:
            self._cb["failed"](error)


@dataclass
class RecordingEvents(Events):
    """Keeps every report: used by tests and by the demo's summary."""

    progresses: list = field(default_factory=list)
    metrics: list = field(default_factory=list)
    logs: list = field(default_factory=list)
    stages: list = field(default_factory=list)  # ("start", name) / ("done", name, ok, seconds, detail)
    reports: list = field(default_factory=list)  # the typed Progress reports (also in progresses)
    result: Any = None
    error: BaseException | None = None

    def progress(self, done, total, what):
        self.progresses.append((done, total, what))

    def metric(self, name, step, value):
        self.metrics.append((name, step, value))

    def log(self, level, text):
        self.logs.append((level, text))

    def report_progress(self, p):
        self.reports.append(p)
        super().report_progress(p)

    def stage(self, name):
        self.stages.append(("start", name))
        super().stage(name)

    def stage_done(self, name, ok=True, seconds=None, detail=None):
        self.stages.append(("done", name, ok, seconds, detail or {}))
        super().stage_done(name, ok, seconds, detail)

    def done(self, result):
        self.result = result

    def failed(self, error):
        self.error = error

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(s, v) for n, s, v in self.metrics if n == name]


class CancelToken:
    """Shared between a front end and a job. Thread-safe.

    ``cancel()`` asks the job to stop at its next check; ``pause()`` parks it at its
    next :meth:`checkpoint` until ``resume()`` (or cancel).
    """

    def __init__(self) -> None:
        self._cancel = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def cancel(self) -> None:
        self._cancel.set()
        self._running.set()  # wake a paused job so it can see the cancel

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def raise_if_cancelled(self, what: str = "cancelled") -> None:
        if self._cancel.is_set():
            raise Cancelled(what)

    def checkpoint(self, on_pause: Callable[[], None] | None = None,
                   on_resume: Callable[[], None] | None = None) -> float:
        """Block while paused (waiting on an event: no CPU); raise :class:`Cancelled` if cancelled.
        Returns the seconds spent paused."""
        waited = 0.0
        if not self._running.is_set():
            t0 = time.monotonic()
            if on_pause:
                on_pause()
            while not self._running.wait(0.5):
                pass
            waited = time.monotonic() - t0
            if on_resume and not self._cancel.is_set():
                on_resume()
        self.raise_if_cancelled()
        return waited


class Throttle:
    """Lets a report through at most every ``interval`` seconds (and always the last)."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self._last = 0.0

    def ready(self, final: bool = False) -> bool:
        now = time.monotonic()
        if final or now - self._last >= self.interval:
            self._last = now
            return True
        return False


def run_job(fn: Callable[..., Any], *args, events: Events | None = None, cancel: CancelToken | None = None, **kwargs) -> Any:
    """Run ``fn`` and report its ending through ``events.done`` / ``events.failed``."""
    events = events or NULL_EVENTS
    try:
        result = fn(*args, events=events, cancel=cancel, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - reported, then re-raised for the caller
        events.failed(exc)
        raise
    events.done(result)
    return result
