"""Run a long job in a process of its own, speaking the same job protocol as in-process.

``in_process(fn)`` returns a job function with ``fn``'s signature: calling it starts ``fn`` in a
spawned child process and returns its result (or raises its error) while the child's reports
(``events``) arrive here as calls on the caller's Events, and the caller's :class:`CancelToken`
(cancel, pause, resume) reaches the child within a few milliseconds.

Why a process: a training step is Python work (building the graph, batches, reports) besides the
numeric kernels. In a thread it shares the interpreter lock with the window's thread, which then
waits for it many times per repaint: measured here, a 10 ms timer in the window stalled up to
100 ms while a tiny model trained. In a child the trainer has an interpreter of its own, and a
crash there (the backend aborting when memory runs out) ends the run, not the app: the run's
checkpoints stay on disk and it can be resumed.

The child stops on its own when its parent is gone (a watchdog on the parent's pid), so a killed
app leaves no trainer behind. ``fn``, its arguments and its result must be picklable (module-level
functions, dataclasses, paths, dicts).
"""
from __future__ import annotations

import functools
import multiprocessing as mp
import os
import pickle
import threading
import time
import traceback
from typing import Any, Callable

from core.events import NULL_EVENTS, CancelToken, Events, TuneloomError

POLL_S = 0.05  # how often the parent mirrors the cancel token while no report arrives
# The child's priority below the caller's (os.nice): on a machine whose cores the trainer fills, the
# window's thread still runs as soon as it wakes up. Alone, the child runs as fast as ever.
NICE = 10
# TUNELOOM_CHILD_NICE: another amount (the test suite sets 0: beside other work on a busy machine, a
# child at +10 got a few percent of a core and a test's training ran past its bound; this default is
# checked in tests/test_isolated.py)
NICE_ENV = "TUNELOOM_CHILD_NICE"


def child_nice() -> int:
    try:
        return int(os.environ.get(NICE_ENV, NICE))
    except ValueError:
        return NICE


class ChildEvents(Events):
    """The child's sink: every report goes to the parent as ``(method, args)``, nothing else is
    derived here (the parent's Events does its own fallbacks, so nothing arrives twice)."""

    def __init__(self, conn):
        self._conn = conn
        self._lock = threading.Lock()

    def _send(self, name: str, *args) -> None:
        with self._lock:
            self._conn.send(("event", name, args))

    def progress(self, done, total, what):
        self._send("progress", done, total, what)

    def report_progress(self, p):
        self._send("report_progress", p)

    def step(self, r):
        self._send("step", r)

    def state(self, state, step=None):
        self._send("state", state, step)

    def metric(self, name, step, value):
        self._send("metric", name, step, value)

    def log(self, level, text):
        self._send("log", level, text)

    def stage(self, name):
        self._send("stage", name)

    def stage_done(self, name, ok=True, seconds=None, detail=None):
        self._send("stage_done", name, ok, seconds, detail)


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:  # the parent died: this process was handed to init
            os._exit(3)


def _error_payload(exc: BaseException) -> tuple:
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)
    except Exception:  # noqa: BLE001 - an error that does not survive pickling is sent as text
        blob = None
    hint = getattr(exc, "hint", "")
    return blob, type(exc).__name__, str(exc), hint, traceback.format_exc()


def _child_main(conn, cancel_ev, running_ev, parent_pid, payload: bytes, nice: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if nice:
        try:  # below the window in the scheduler's eyes: it gets a core the moment it has work
            os.nice(nice)
        except OSError:
            pass
    fn, args, kwargs = pickle.loads(payload)  # imports the job's modules, at the lower priority already
    token = CancelToken()
    token._cancel, token._running = cancel_ev, running_ev  # the parent's events, shared across processes
    events = ChildEvents(conn)
    try:
        result = fn(*args, events=events, cancel=token, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - every ending is reported to the parent
        conn.send(("error",) + _error_payload(exc))
    else:
        conn.send(("ok", result))
    conn.close()


def _rebuild_error(blob, name: str, message: str, hint: str, tb: str) -> BaseException:
    if blob is not None:
        try:
            exc = pickle.loads(blob)
            exc.child_traceback = tb
            return exc
        except Exception:  # noqa: BLE001
            pass
    exc = TuneloomError(f"{name}: {message}" if message else name, hint)
    exc.child_traceback = tb
    return exc


def _exit_text(code: int | None) -> str:
    if code is None:
        return "without a word"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"with exit code {code}"


def run_in_process(fn: Callable[..., Any], *args, events: Events | None = None, cancel: CancelToken | None = None,
                   what: str = "The job", nice: int | None = None, **kwargs) -> Any:
    """Run ``fn(*args, events=, cancel=, **kwargs)`` in a spawned child and wait for it here.

    ``nice``: how much lower the child's scheduling priority is than this process's (0: the same;
    default :data:`NICE`, or ``TUNELOOM_CHILD_NICE``)."""
    nice = child_nice() if nice is None else nice
    events = events or NULL_EVENTS
    cancel = cancel or CancelToken()
    ctx = mp.get_context("spawn")
    cancel_ev, running_ev = ctx.Event(), ctx.Event()
    if cancel.cancelled:
        cancel_ev.set()
    if not cancel.paused:
        running_ev.set()
    ours, theirs = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, name="tuneloom-job", daemon=True,
                       args=(theirs, cancel_ev, running_ev, os.getpid(), pickle.dumps((fn, args, kwargs)), nice))
    proc.start()
    theirs.close()  # the child holds the only writing end now: its death reads as EOF here
    try:
        while True:
            # mirror the token: pause, resume and cancel reach the child between its steps
            if cancel.cancelled and not cancel_ev.is_set():
                cancel_ev.set()
                running_ev.set()
            elif not cancel.cancelled:
                if cancel.paused and running_ev.is_set():
                    running_ev.clear()
                elif not cancel.paused and not running_ev.is_set():
                    running_ev.set()
            if not ours.poll(POLL_S):
                continue
            try:
                msg = ours.recv()
            except (EOFError, OSError):
                proc.join(5)
                raise TuneloomError(
                    f"{what} stopped unexpectedly (its process ended {_exit_text(proc.exitcode)}).",
                    "What it saved so far is kept. If it ran out of memory, try a smaller batch or "
                    "shorter examples; the log (Help > Show logs) says more.") from None
            kind = msg[0]
            if kind == "event":
                _, name, ev_args = msg
                getattr(events, name)(*ev_args)
            elif kind == "ok":
                return msg[1]
            elif kind == "error":
                raise _rebuild_error(*msg[1:])
    finally:
        ours.close()
        proc.join(10)
        if proc.is_alive():  # it should have ended with its last message; make sure
            proc.kill()
            proc.join(5)


def in_process(fn: Callable[..., Any], what: str = "The job") -> Callable[..., Any]:
    """``fn`` as a job that runs in a child process (see :func:`run_in_process`)."""

    @functools.wraps(fn)
    def job(*args, events=None, cancel=None, **kwargs):
        return run_in_process(fn, *args, events=events, cancel=cancel, what=what, **kwargs)

    return job


def probe(events: Events | None = None, cancel: CancelToken | None = None) -> dict:
    """A job that says where it runs (``tuneloom selfcheck``, the tests)."""
    (events or NULL_EVENTS).log("info", "probe running")
    return {"pid": os.getpid(), "parent": os.getppid(), "nice": os.nice(0) if hasattr(os, "nice") else None}

