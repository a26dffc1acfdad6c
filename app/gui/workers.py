"""Run `core` jobs off the GUI thread and turn their events into Qt signals."""
from __future__ import annotations

import gc
import time
from typing import Any, Callable

from PySide6.QtCore import QObject, QThreadPool, Signal
from superqt.utils import create_worker

from core.events import CancelToken, Events


class QtEvents(QObject, Events):
    """Events whose reports become signals; emitted from the worker, delivered on the GUI thread."""

    progress_changed = Signal(object, object, str)  # done (None: not known), total (None: unknown), what
    metric_reported = Signal(str, int, float)
    logged = Signal(str, str)

    def progress(self, done, total, what):
        self.progress_changed.emit(None if done is None else float(done), total, str(what))

    def metric(self, name, step, value):
        self.metric_reported.emit(name, int(step), float(value))

    def log(self, level, text):
        self.logged.emit(level, text)


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
        quiet = self.quiet_gc

        def done():  # on the worker's signal, so it runs even when the Job is already gone
            _live.discard(worker)
            if quiet:
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
