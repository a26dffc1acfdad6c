"""Run `core` jobs off the GUI thread and turn their events into Qt signals.

:class:`Job` is one run of a core function on a pool thread. :class:`JobSlot` is a kind of job
("data", "train", ...) of which only the latest counts: starting a new one stops the old one, and
the handlers given to :meth:`JobSlot.start` are called only while their job is the current one,
so no page writes its own "is this still my job?" guards. A slot can pause, resume and stop its
job (through the job's CancelToken) and tells the Qt-free session which kinds are busy.
"""
from __future__ import annotations

import gc
import time
from typing import Any, Callable

from PySide6.QtCore import QObject, QThreadPool, Signal
from superqt.utils import create_worker

from core.events import CancelToken, Events, Progress, StepReport


class QtEvents(QObject, Events):
    """Events whose reports become signals; emitted from the worker, delivered on the GUI thread."""

    # one signal per report: progress of either kind arrives as a core.events.Progress, a step as its
    # StepReport (not also as the per-metric copies Events.step falls back to for sinks without it)
    progress_reported = Signal(object)  # core.events.Progress
    step_reported = Signal(object)  # core.events.StepReport
    state_changed = Signal(str, object)  # "paused" / "running", step
    metric_reported = Signal(str, int, float)  # the figures a step report does not hold (validation, rewards)
    logged = Signal(str, str)
    stage_started = Signal(str)  # core.events.Events.stage
    stage_ended = Signal(str, object, object, object)  # name, ok (True / False / None: skipped), seconds, detail

    def progress(self, done, total, what):
        self.progress_reported.emit(Progress(None if done is None else float(done), total, what=str(what)))

    def report_progress(self, p: Progress):
        self.progress_reported.emit(p)

    def step(self, r: StepReport):
        self.step_reported.emit(r)

    def state(self, state, step=None):
        self.state_changed.emit(state, step)

    def metric(self, name, step, value):
        self.metric_reported.emit(name, int(step), float(value))

    def log(self, level, text):
        self.logged.emit(level, text)

    def stage(self, name):
        self.stage_started.emit(str(name))

    def stage_done(self, name, ok=True, seconds=None, detail=None):
        self.stage_ended.emit(str(name), ok, seconds, dict(detail or {}))


# superqt runs workers on the global pool, whose size is the number of cores: on a 2-core
# machine a download and a training run would leave a model check waiting in the queue.
MIN_POOL_THREADS = 8
# Workers still running, kept alive even when the Job (a child of a closed window) is gone.
_live: set = set()

# Python's cyclic garbage collector stops every thread while it scans, and a full scan of this
# process (Qt, pyqtgraph, transformers, MLX, a dataset) takes ~100 ms: a job that builds many
# objects (reading a dataset) triggers several, and each freezes the window. So: such jobs run
# with the collector paused (reading and tokenizing a dataset make no reference cycles; loading
# a tokenizer the first time leaves a few hundred objects), and whatever is alive when a job ends
# (modules imported by the job, the dataset it built) is moved out of the collector's sight with
# gc.freeze(). Frozen objects are still freed by reference counting when they are dropped.
# tests/test_gui_data.py asserts the window keeps ticking while a large dataset is read.
_quiet_jobs = 0


def _pause_gc() -> None:
    global _quiet_jobs
    _quiet_jobs += 1
    if _quiet_jobs == 1:
        gc.disable()


def _resume_gc() -> None:
    global _quiet_jobs
    _quiet_jobs -= 1
    if _quiet_jobs == 0:
        gc.freeze()  # the dataset such a job built: long-lived, and (by design) free of cycles
        gc.enable()


class Job(QObject):
    """One running core job: its events, its cancel token and its ending."""

    finished_ok = Signal(object)
    failed = Signal(object)
    ended = Signal()

    def __init__(self, fn: Callable[..., Any], *args, parent: QObject | None = None, quiet_gc: bool = False,
                 **kwargs):
        """``quiet_gc``: pause the cyclic garbage collector while this job runs (for jobs that allocate
        a lot and make no reference cycles, such as reading a dataset)."""
        super().__init__(parent)
        self.quiet_gc = quiet_gc
        self.events = QtEvents(self)
        self.cancel = CancelToken()
        self.running = False
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._worker = None
        self._quiet = False

    def start(self, delay_ms: int = 0) -> "Job":
        """Run the job on a pool thread. ``delay_ms``: the thread waits that long first (without the
        GIL), so the window can lay out and paint what changed before the job competes with it."""
        def call():
            if delay_ms:
                time.sleep(delay_ms / 1000)
                self.cancel.raise_if_cancelled("cancelled before it started")
            return self._fn(*self._args, events=self.events, cancel=self.cancel, **self._kwargs)

        # errors are ours to show (the failed signal); superqt would otherwise re-raise them
        self._worker = create_worker(call, _start_thread=False, _ignore_errors=True)
        self._worker.returned.connect(self._on_returned)
        self._worker.errored.connect(self._on_errored)
        self._worker.finished.connect(self._on_finished)
        worker = self._worker
        _live.add(worker)
        self._quiet = self.quiet_gc

        def done():  # on the worker's signal, so it runs even when the Job is already gone
            _live.discard(worker)
            if self._quiet:
                self._quiet = False
                _resume_gc()
            elif _quiet_jobs == 0:
                # what the job imported or built and is still alive is long-lived (modules it imported);
                # garbage cycles it left are collected first, so none is frozen for good. Cheap: only
                # objects made since the last freeze are scanned.
                gc.collect()
                gc.freeze()

        worker.finished.connect(done)
        pool = QThreadPool.globalInstance()
        if pool.maxThreadCount() < MIN_POOL_THREADS:
            pool.setMaxThreadCount(MIN_POOL_THREADS)
        self.running = True
        if self.quiet_gc:
            _pause_gc()
        self._worker.start()
        return self

    def stop(self) -> None:
        self.cancel.cancel()

    def end_quiet_gc(self) -> None:
        """A quiet job whose set-up is over (a trainer that loaded its model): what it built is long-lived,
        so freeze it and let the collector run again for the garbage of the steps that follow."""
        if self._quiet:
            self._quiet = False
            _resume_gc()

    @property
    def cancelled(self) -> bool:
        return self.cancel.cancelled

    def _on_returned(self, result):
        self.finished_ok.emit(result)

    def _on_errored(self, exc):
        self.failed.emit(exc)

    def _on_finished(self):
        self.running = False
        # the Job stays (a child of its window) but not what it worked on: a replaced dataset is freed
        self._fn, self._args, self._kwargs = None, (), {}
        self._worker = None
        self.ended.emit()


class JobSlot(QObject):
    """The latest job of one kind; ``start`` replaces (stops) the one before.

    Handlers passed to :meth:`start` (progress, step, metric, log, ok, failed, ended) are
    called only while their job is the slot's current one. ``state`` is "idle", "running",
    "pausing" (asked, not yet parked), "paused" (parked: computing nothing) or "stopping"."""

    state_changed = Signal(str)
    started = Signal(object)  # the Job
    ended = Signal(object)  # the Job that was current when it ended

    def __init__(self, kind: str, parent: QObject | None = None, session=None):
        super().__init__(parent)
        self.kind = kind
        self.session = session
        self.job: Job | None = None
        self.state = "idle"

    # -- state
    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    @property
    def paused(self) -> bool:
        return self.state == "paused"

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        if self.session is not None:
            self.session.set_job(self.kind, None if state == "idle" else state)
        self.state_changed.emit(state)

    # -- control
    def start(self, fn: Callable[..., Any], *args, on_progress=None, on_report=None, on_step=None, on_metric=None,
              on_log=None, on_stage=None, on_stage_done=None, on_ok=None, on_failed=None, on_ended=None,
              delay_ms: int = 0, quiet_gc: bool = False, parent: QObject | None = None, **kwargs) -> Job:
        """Stop the current job (if any) and start ``fn(*args, events=, cancel=, **kwargs)``."""
        self.stop()
        job = Job(fn, *args, parent=parent or self.parent() or self, quiet_gc=quiet_gc, **kwargs)
        current = lambda: self.job is job  # noqa: E731

        def guard(handler):
            return lambda *a: handler(*a) if current() else None

        ev = job.events
        if on_progress is not None:  # a handler of (done, total, what): fed from the typed report
            ev.progress_reported.connect(guard(lambda p: on_progress(p.done, p.total, p.what)))
        for sig, handler in ((ev.progress_reported, on_report),
                             (ev.step_reported, on_step), (ev.metric_reported, on_metric), (ev.logged, on_log),
                             (ev.stage_started, on_stage), (ev.stage_ended, on_stage_done),
                             (job.finished_ok, on_ok), (job.failed, on_failed)):
            if handler is not None:
                sig.connect(guard(handler))
        ev.state_changed.connect(lambda st, _step: current() and self._parked(st))

        def ended():
            if not current():
                return
            self._set_state("idle")
            if on_ended is not None:
                on_ended()
            self.ended.emit(job)

        job.ended.connect(ended)
        self.job = job
        job.start(delay_ms=delay_ms)
        self._set_state("running")
        self.started.emit(job)
        return job

    def _parked(self, st: str) -> None:
        if st == "paused" and self.state == "pausing":
            self._set_state("paused")
        elif st == "running" and self.state in ("paused", "pausing"):
            self._set_state("running")

    def stop(self) -> None:
        """Ask the current job to stop (it ends at its next check; a paused one wakes up to stop)."""
        if self.running:
            self.job.stop()
            self._set_state("stopping")

    def pause(self) -> None:
        """Park the job at its next checkpoint (CancelToken.checkpoint): it waits on an event, using no CPU."""
        if self.running and self.state == "running":
            self.job.cancel.pause()
            self._set_state("pausing")

    def resume(self) -> None:
        if self.running and self.state in ("pausing", "paused"):
            self.job.cancel.resume()
            self._set_state("running")

    def toggle_pause(self) -> None:
        if self.state in ("pausing", "paused"):
            self.resume()
        else:
            self.pause()


class JobSlots(QObject):
    """Every slot of a window, by kind; slots are made on first use."""

    def __init__(self, parent: QObject | None = None, session=None):
        super().__init__(parent)
        self.session = session
        self._slots: dict[str, JobSlot] = {}

    def __getitem__(self, kind: str) -> JobSlot:
        slot = self._slots.get(kind)
        if slot is None:
            slot = self._slots[kind] = JobSlot(kind, self.parent() or self, self.session)
        return slot

    def __contains__(self, kind: str) -> bool:
        return kind in self._slots

    def items(self):
        return self._slots.items()

    def running(self, kind: str) -> bool:
        slot = self._slots.get(kind)
        return slot is not None and slot.running

    def jobs(self) -> dict[str, Job]:
        """kind -> the slot's latest job (running or not)."""
        return {k: s.job for k, s in self._slots.items() if s.job is not None}

    def stop_all(self) -> None:
        for s in self._slots.values():
            s.stop()
