"""The Qt-free session model and step states, and the job slots (latest wins, pause, resume, stop)."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from app.session import Session, step_states  # noqa: E402


@dataclass
class FakeDataset:
    records: list = field(default_factory=list)
    invalid: int = 0


def test_changes_are_announced_once_per_update_and_only_when_something_changed():
    s = Session()
    seen = []
    s.changed.connect(seen.append)
    s.update(model_dir="/tmp/m", model_name="m")
    s.update(model_dir=Path("/tmp/m"))  # the same value: nothing to announce
    s.run_dir = "/tmp/r"
    assert seen == [{"model_dir", "model_name"}, {"run_dir"}]
    assert isinstance(s.model_dir, Path) and s.run_dir == Path("/tmp/r")
    ds = FakeDataset([1])
    s.update(dataset=ds)
    s.update(dataset=ds)
    s.update(dataset=FakeDataset([1]))  # another object, equal or not: a new dataset
    assert seen[2:] == [{"dataset"}, {"dataset"}]


def test_step_states_are_a_function_of_the_session(tmp_path):
    s = Session()
    st = step_states(s)
    assert st["Model"][0] == "ready" and st["Train"] == ("blocked", "needs a model", "Blocked: choose a model first")
    s.update(model_dir=tmp_path, model_name="Demo")
    assert step_states(s)["Train"] == ("blocked", "needs examples", "Blocked: add a dataset with usable examples first")
    assert s.train_blocker().startswith("Add a dataset")
    s.update(dataset=FakeDataset([1, 2, 3], invalid=1))
    st = step_states(s)
    assert st["Data"] == ("done", "3 examples, 1 with problems", "Done: 3 usable examples, 1 with problems")
    assert st["Train"][0] == "ready" and s.train_blocker() is None
    s.set_job("train", "running")
    assert step_states(s)["Train"][0] == "busy" and s.train_blocker() == "A run is in progress."
    s.set_job("train", "paused")
    assert step_states(s)["Train"][1] == "paused"
    s.set_job("train", None)
    run = tmp_path / "run"
    run.mkdir()
    s.update(run_dir=run)
    assert step_states(s)["Try"][0] == "blocked"  # no adapter yet
    (run / "adapters.safetensors").write_bytes(b"x")
    st = step_states(s)
    assert st["Train"][0] == "done" and st["Try"][0] == "ready" and st["Export"][1] == "write a GGUF"
    (run / "exports").mkdir()
    (run / "exports" / "model.gguf").write_bytes(b"GGUF")
    assert step_states(s)["Export"][0] == "done"
    s.update(data_loading=True)
    assert step_states(s)["Data"][0] == "busy"


def counting_job(counter: list, cpu: list | None = None, events=None, cancel=None):
    """Counts until cancelled, stopping at the token's checkpoint between counts (as the trainer does).
    ``cpu``: this thread's CPU time when it parks and when it wakes (the CPU of this thread only: other
    threads of a long test process are not its business)."""
    def parked():
        if cpu is not None:
            cpu.append(time.thread_time())
        events.state("paused")

    def woke():
        if cpu is not None:
            cpu.append(time.thread_time())
        events.state("running")

    while True:
        paused = cancel.checkpoint(on_pause=parked, on_resume=woke)
        counter.append(paused)
        time.sleep(0.01)


def test_job_slot_latest_wins_pause_resume_stop(qtbot):
    from app.gui.workers import JobSlots

    s = Session()
    slots = JobSlots(session=s)
    slot = slots["count"]
    first, second, ended = [], [], []
    slot.start(counting_job, first, on_failed=lambda exc: ended.append(("first", type(exc).__name__)))
    qtbot.waitUntil(lambda: len(first) > 3, timeout=5000)
    old = slot.job
    cpu = []
    slot.start(counting_job, second, cpu, on_failed=lambda exc: ended.append(("second", type(exc).__name__)))
    qtbot.waitUntil(lambda: not old.running, timeout=5000)
    assert ended == []  # the replaced job's ending is not the slot's business any more
    assert s.job("count") == "running"
    slot.pause()
    assert slot.state == "pausing"
    qtbot.waitUntil(lambda: slot.state == "paused", timeout=5000)
    assert s.job("count") == "paused"
    n = len(second)
    qtbot.wait(600)
    assert len(second) == n  # parked: nothing counted
    slot.toggle_pause()
    qtbot.waitUntil(lambda: len(second) > n + 3, timeout=5000)
    assert len(cpu) == 2 and cpu[1] - cpu[0] < 0.3, cpu  # and no CPU spent while parked (no busy wait)
    assert second[n] > 0.4  # the job was told how long it waited
    with qtbot.waitSignal(slot.ended, timeout=5000):
        slot.stop()
    assert ended == [("second", "Cancelled")] and slot.state == "idle" and s.job("count") is None
    assert threading.active_count() >= 1
