"""core.isolated: a job in a process of its own speaks the same protocol as in a thread."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core import atomic
from core.events import Cancelled, CancelToken, RecordingEvents, StepReport, TuneloomError
from core.isolated import in_process, probe, run_in_process

ROOT = Path(__file__).resolve().parents[1]


class Recorder(RecordingEvents):
    def __init__(self):
        super().__init__()
        self.states = []

    def state(self, state, step=None):
        self.states.append((state, step))


# -- jobs (module level: the child imports them by name) ------------------------------------------

def reporting_job(n, *, events=None, cancel=None, scale=1.0):
    for i in range(1, n + 1):
        events.progress(i, n, f"item {i}")
        events.metric("loss", i, scale / i)
    events.step(StepReport(step=n, total=n, epoch=1.0, train_loss=0.5, learning_rate=1e-3, tokens_per_sec=10.0,
                           trained_tokens=7, peak_memory=0.0, elapsed=1.0, eta_seconds=0.0))
    events.stage_done("stage", True, 1.5, {"n": n})
    events.log("info", "done here")
    return {"pid": os.getpid(), "n": n}


def failing_job(*, events=None, cancel=None):
    raise TuneloomError("The data is wrong at line 3.", "Fix line 3.")


def crashing_job(*, events=None, cancel=None):
    events.log("info", "about to die")
    os.kill(os.getpid(), signal.SIGKILL)


def looping_job(pid_file, *, events=None, cancel=None):
    # written whole under its name: a test that waits for the file must never read it empty (seen once, a quiet run)
    atomic.write_text(pid_file, str(os.getpid()))
    step = 0
    try:
        while True:
            cancel.checkpoint(on_pause=lambda: events.state("paused", step), on_resume=lambda: events.state("running", step))
            step += 1
            events.metric("step", step, float(step))
            time.sleep(0.01)
    except Cancelled:
        raise Cancelled("stopped", result={"steps": step}) from None


# -- tests ------------------------------------------------------------------------------------------

def test_reports_and_result_arrive_from_another_process_once_each():
    ev = Recorder()
    got = run_in_process(reporting_job, 3, events=ev, scale=2.0)
    assert got["n"] == 3 and got["pid"] != os.getpid()
    # the step's own metrics are derived here (Events.step's fallback), not sent twice
    assert ev.series("loss") == [(1, 2.0), (2, 1.0), (3, 2.0 / 3)]
    assert [name for name, *_ in ev.metrics if name == "train_loss"] == ["train_loss"]
    assert ("info", "done here") in ev.logs
    assert [p[0] for p in ev.progresses] == [1, 2, 3]
    assert ev.stages == [("done", "stage", True, 1.5, {"n": 3})]  # typed stages cross the pipe typed


def test_in_process_keeps_the_job_signature():
    job = in_process(reporting_job)
    assert job.__name__ == "reporting_job"
    assert job(2, events=RecordingEvents())["n"] == 2


def test_an_error_comes_back_with_its_type_and_hint():
    with pytest.raises(TuneloomError) as info:
        run_in_process(failing_job)
    assert str(info.value) == "The data is wrong at line 3." and info.value.hint == "Fix line 3."
    assert "failing_job" in info.value.child_traceback


def test_a_crashed_child_is_a_clear_error_not_a_hang():
    ev = Recorder()
    t0 = time.monotonic()
    with pytest.raises(TuneloomError) as info:
        run_in_process(crashing_job, events=ev, what="Training")
    assert time.monotonic() - t0 < 60
    assert "Training stopped unexpectedly" in str(info.value) and "SIGKILL" in str(info.value)
    assert "kept" in info.value.hint
    assert ("info", "about to die") in ev.logs


def test_pause_parks_the_child_resume_goes_on_and_cancel_stops_it(tmp_path):
    ev, tok = Recorder(), CancelToken()
    out = {}
    th = threading.Thread(target=lambda: out.update(
        r=_catch(lambda: run_in_process(looping_job, str(tmp_path / "pid"), events=ev, cancel=tok))))
    th.start()
    _wait(lambda: len(ev.series("step")) >= 5)
    tok.pause()
    _wait(lambda: bool(ev.states) and ev.states[-1][0] == "paused")
    n = len(ev.series("step"))
    time.sleep(0.5)
    assert len(ev.series("step")) == n  # parked: nothing computed
    tok.resume()
    _wait(lambda: len(ev.series("step")) >= n + 5)
    tok.cancel()
    th.join(120)  # a bound for a child that never stops, not a speed (2.5 s was seen on a loaded machine)
    assert not th.is_alive()
    err = out["r"]
    assert isinstance(err, Cancelled) and err.result["steps"] >= n + 5
    assert [s for s, _ in ev.series("step")] == list(range(1, len(ev.series("step")) + 1))
    assert [st for st, _ in ev.states] == ["paused", "running"]


def test_the_child_runs_below_the_callers_priority(monkeypatch):
    monkeypatch.delenv("TUNELOOM_CHILD_NICE", raising=False)  # (the suite's conftest sets 0)
    got = run_in_process(probe)
    assert got["parent"] == os.getpid()
    assert got["nice"] == min(19, os.nice(0) + 10)
    monkeypatch.setenv("TUNELOOM_CHILD_NICE", "0")
    assert run_in_process(probe)["nice"] == os.nice(0)


def test_a_killed_parent_leaves_no_child_behind(tmp_path):
    pid_file = tmp_path / "pid"
    code = ("import sys; sys.path[:0] = %r\n"
            "from core.isolated import run_in_process\n"
            "from test_isolated import looping_job\n"
            "run_in_process(looping_job, %r)\n") % ([str(ROOT), str(ROOT / "tests")], str(pid_file))
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        _wait(pid_file.exists, timeout=60)
        child = int(pid_file.read_text())
        assert _alive(child)
        parent.kill()
        parent.wait(10)
        _wait(lambda: not _alive(child), timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_selfcheck_runs_a_job_in_a_child(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "app.cli", "selfcheck"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["ok"] is True and got["child"] != got["parent"]


# -- helpers ----------------------------------------------------------------------------------------

def _catch(fn):
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001
        return exc


def _wait(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return sys.platform != "linux"
