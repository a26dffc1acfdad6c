import threading
import time

import pytest

from core.events import CallbackEvents, Cancelled, CancelToken, RecordingEvents, TuneloomError, run_job


def job(n, events=None, cancel=None):
    for i in range(n):
        cancel.checkpoint()
        events.progress(i + 1, n, "working")
        events.metric("x", i, i * 2.0)
    events.log("info", "finished")
    return n


def test_run_job_reports_done_and_events():
    ev = RecordingEvents()
    assert run_job(job, 3, events=ev, cancel=CancelToken()) == 3
    assert ev.result == 3 and ev.error is None
    assert ev.progresses[-1] == (3, 3, "working")
    assert ev.series("x") == [(0, 0.0), (1, 2.0), (2, 4.0)]
    assert ev.logs == [("info", "finished")]


def test_cancel_stops_and_reports_failed():
    tok = CancelToken()
    tok.cancel()
    ev = RecordingEvents()
    with pytest.raises(Cancelled):
        run_job(job, 3, events=ev, cancel=tok)
    assert isinstance(ev.error, Cancelled) and ev.result is None


def test_pause_parks_until_resume():
    tok = CancelToken()
    tok.pause()
    seen = []
    t = threading.Thread(target=lambda: seen.append(run_job(job, 2, events=RecordingEvents(), cancel=tok)))
    t.start()
    time.sleep(0.3)
    assert t.is_alive() and not seen  # parked
    tok.resume()
    t.join(5)
    assert seen == [2]


def test_cancel_wakes_a_paused_job():
    tok = CancelToken()
    tok.pause()
    errors = []

    def target():
        try:
            job(2, events=RecordingEvents(), cancel=tok)
        except Cancelled as exc:
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    time.sleep(0.2)
    tok.cancel()
    t.join(5)
    assert not t.is_alive() and len(errors) == 1


def test_callback_events_and_user_message():
    got = []
    ev = CallbackEvents(progress=lambda *a: got.append(a))
    ev.progress(1, 2, "x")
    ev.metric("a", 1, 1.0)  # no callback: ignored
    assert got == [(1, 2, "x")]
    err = TuneloomError("bad file", "fix line 3")
    assert err.user_message() == "bad file\nfix line 3"


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """core.atomic's files are readable as a plain new file is (0666 less the umask: other programs, other
    users), not mkstemp's 0600; a file written over keeps its own permissions."""
    import os
    import stat

    from core import atomic

    umask = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "new.json", "{}")
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == atomic.new_mode()
        (tmp_path / "mine.json").write_text("old")
        os.chmod(tmp_path / "mine.json", 0o640)
        atomic.write_text(tmp_path / "mine.json", "new")
        assert stat.S_IMODE((tmp_path / "mine.json").stat().st_mode) == 0o640
        assert (tmp_path / "mine.json").read_text() == "new"
    finally:
        os.umask(umask)


def test_stages_are_reported_typed_and_reach_a_log_only_sink_by_name():
    from core.events import StageClock

    ev = RecordingEvents()
    clock = StageClock(ev)
    clock.start("gguf")
    seconds = clock.done("gguf", tensors=12)
    clock.done("never started", ok=None)
    assert ev.stages[0] == ("start", "gguf")
    assert ev.stages[1][:3] == ("done", "gguf", True) and ev.stages[1][3] == seconds >= 0
    assert ev.stages[1][4] == {"tensors": 12}
    assert ev.stages[2] == ("done", "never started", None, 0.0, {})
    # a sink that knows only log() sees the names, no JSON to parse
    logged = []
    StageClock(CallbackEvents(log=lambda lv, t: logged.append((lv, t)))).start("upload")
    assert logged == [("stage", "upload")]


def test_export_reports_no_stage_through_a_module_global():
    import core.export.ollama as ol

    assert not hasattr(ol, "_STAGE_T0") and not hasattr(ol, "_stage_done_text")
