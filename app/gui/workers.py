"""Run `core` jobs off the GUI thread and turn their events into Qt signals."""
from __future__ import annotations

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


class Job(QObject):
    """One running core job: its events, its cancel token and its ending."""

    finished_ok = Signal(object)
    failed = Signal(object)
    ended = Signal()

    def __init__(self, fn: Callable[..., Any], *args, parent: QObject | None = None, **kwargs):
        super().__init__(parent)
        self.events = QtEvents(self)
        self.cancel = CancelToken()
        self.running = False
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._worker = None

    def start(self) -> "Job":
        def call():
            return self._fn(*self._args, events=self.events, cancel=self.cancel, **self._kwargs)

        # errors are ours to show (the failed signal); superqt would otherwise re-raise them
        self._worker = create_worker(call, _start_thread=False, _ignore_errors=True)
        self._worker.returned.connect(self._on_returned)
        self._worker.errored.connect(self._on_errored)
        self._worker.finished.connect(self._on_finished)
        pool = QThreadPool.globalInstance()
        if pool.maxThreadCount() < MIN_POOL_THREADS:
            pool.setMaxThreadCount(MIN_POOL_THREADS)
        self.running = True
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
        self.ended.emit()
