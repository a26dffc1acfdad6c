"""Fault injection (issue 25): reused folders, two writers, damaged files, impossible options, a diverging
run, a full disk. Each test asserts the message, the exit code and the files left: nothing the user made is
lost, and no failure is reported as success."""
import errno
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import checkpoints, runs
from core.events import Cancelled, CancelToken, RecordingEvents, TuneloomError
from core.paths import demo_data_dir, demo_model_dir
from core.train import ConfigError, TrainConfig, TrainingDiverged, train

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(rank=4, alpha=8.0, lr=1e-3, batch=8, max_seq_len=128, warmup=2, valid_every=0, valid_batches=2,
            checkpoint_every=3, seed=3)
CLI_FAST = ["--rank", "4", "--batch", "8", "--max-seq-len", "128", "--lr", "1e-3", "--warmup", "2",
            "--valid-every", "0", "--valid-batches", "2", "--checkpoint-every", "3", "--seed", "3"]


def tl(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def cfg(out, **kw):
    return TrainConfig(model=str(demo_model_dir()), data=[str(demo_data_dir())], out=str(out), **{**FAST, **kw})


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes' hash and mtime: what 'nothing changed' compares."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def no_traceback(p):
    assert "Traceback" not in p.stderr, p.stderr[-3000:]


def stop_at(step: int, tok: CancelToken):
    class StopAt(RecordingEvents):
        def metric(self, name, s, value):
            super().metric(name, s, value)
            if name == "train_loss" and s == step:
                tok.cancel()

    return StopAt()


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A finished 4-step CLI run (a folder the user made)."""
    run = tmp_path_factory.mktemp("done") / "run"
    p = tl("train", "--model", demo_model_dir(), "--data", demo_data_dir(), "--out", run, "--iters", "4", *CLI_FAST)
    assert p.returncode == 0, p.stderr[-2000:]
    return run


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A 12-step run stopped after step 7: checkpoints at steps 3 and 6 (and 7, the stop's own)."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    tok = CancelToken()
    with pytest.raises(Cancelled):
        train(cfg(run, iters=12), events=stop_at(7, tok), cancel=tok)
    return run


# --- 1. a run folder belongs to one run ---------------------------------------------------------------

def test_out_on_a_folder_holding_a_run_is_refused_and_nothing_changes(done_run):
    before = snapshot(done_run)
    p = tl("train", "--model", demo_model_dir(), "--data", demo_data_dir(), "--out", done_run, "--iters", "6",
           *CLI_FAST)
    assert p.returncode != 0
    no_traceback(p)
    assert "already holds a run" in p.stderr and f"--resume {done_run}" in p.stderr and "--out" in p.stderr
    assert snapshot(done_run) == before  # not one byte of the first run changed


def test_a_second_writer_is_refused_at_once(done_run, tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with runs.RunLock(fresh):
        assert runs.run_locked_by_other(fresh) and runs.lock_holder(fresh) == os.getpid()
        t0 = time.monotonic()
        p = tl("train", "--model", demo_model_dir(), "--data", demo_data_dir(), "--out", fresh, "--iters", "4",
               *CLI_FAST)
        assert p.returncode != 0
        no_traceback(p)
        assert f"being trained by another process (pid {os.getpid()})" in p.stderr
        assert time.monotonic() - t0 < 60  # refused before any loading (no model, no data read)
        assert sorted(x.name for x in fresh.iterdir()) == [runs.LOCK_NAME]
    assert not runs.run_locked_by_other(fresh)
    with runs.RunLock(done_run):
        p = tl("train", "--resume", done_run)
        assert p.returncode != 0 and "being trained by another process" in p.stderr
        no_traceback(p)


def test_a_window_looking_at_the_lock_does_not_turn_a_writer_away(tmp_path, monkeypatch):
    """History and Export look at a run's lock (lock_holder: a shared lock for an instant). A writer whose
    exclusive lock meets that instant tries again instead of saying another process trains the run; a
    lock a writer keeps is refused as before."""
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    real = fcntl.flock
    calls = []

    def flock(fd, op):  # the first exclusive try meets a reader's shared lock, the next finds it gone
        if op == fcntl.LOCK_EX | fcntl.LOCK_NB:
            calls.append(op)
            if len(calls) == 1:
                raise BlockingIOError(11, "Resource temporarily unavailable")
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with runs.RunLock(run):
        assert len(calls) == 2 and runs.lock_holder(run) == os.getpid()
    monkeypatch.setattr(fcntl, "flock", real)
    with runs.RunLock(run):
        with pytest.raises(runs.RunFolderTaken, match="being trained by another process"):
            runs.RunLock(run).acquire()


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = ("import sys, time; from core import runs; runs.RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert runs.lock_holder(run) == proc.pid
        runs.set_status(run, "running", pid=proc.pid)
        (run / "config.json").write_text("{}")
        assert runs.RunInfo.load(run).state == "running"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert not runs.run_locked_by_other(run)
    assert runs.RunInfo.load(run).state == "interrupted"
    with runs.RunLock(run):  # and the next writer gets it
        pass


def test_resuming_a_finished_run_does_not_train_again(done_run):
    before = snapshot(done_run)
    p = tl("train", "--resume", done_run)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "is finished" in p.stderr and "all 4 steps" in p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["already_finished"] is True
    after = snapshot(done_run)
    assert {k: v for k, v in after.items() if not k.startswith(".")} == \
        {k: v for k, v in before.items() if not k.startswith(".")}


def test_resume_with_other_options_is_refused_not_ignored(done_run):
    before = snapshot(done_run)
    p = tl("train", "--resume", done_run, "--iters", "9", "--lr", "5e-4")
    assert p.returncode == 2
    no_traceback(p)
    assert "--iters 9 differs from the run's 4" in p.stderr and "--lr 0.0005 differs" in p.stderr
    assert "start a new run" in p.stderr
    assert snapshot(done_run) == before
    # the same values as the run's own are fine (and a finished run then says so)
    p = tl("train", "--resume", done_run, "--iters", "4")
    assert p.returncode == 0 and "is finished" in p.stderr


def test_resume_refuses_a_checkpoint_of_another_config(stopped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "rank": 8, "alpha": 16.0}))  # another run's config
    with pytest.raises(TuneloomError) as info:
        train(TrainConfig(model=""), resume=run, events=RecordingEvents())
    assert "written for another configuration" in str(info.value) and "step-000007" in str(info.value)
    assert (run / "checkpoints" / "step-000007").is_dir()  # nothing set aside or deleted


def test_a_new_best_after_the_last_checkpoint_does_not_block_the_resume(stopped_run, tmp_path):
    """A validation that finds a new best writes best_step into config.json; a kill before the next
    checkpoint left that checkpoint looking like another run's ("written for another configuration"),
    seen once as a group's killed-rank resume. The best is a result, not an option."""
    from core import checkpoints
    from core.train.best import _record_best

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    before = json.loads((run / "config.json").read_text()).get("best_step")
    _record_best(run, 9, 0.125)  # as a validation after step 7 would, before the kill
    assert json.loads((run / "config.json").read_text())["best_step"] == 9 != before
    ck = run / "checkpoints" / "step-000007"
    assert checkpoints.belongs_to(ck, json.loads((run / "config.json").read_text()))
    # a checkpoint of an earlier version fingerprinted the best too: accepted while the best is the same
    state = json.loads((ck / "state.json").read_text())
    config = json.loads((run / "config.json").read_text())
    (ck / "state.json").write_text(json.dumps({**state, "config": checkpoints.config_fingerprint(config, results=True)}))
    assert checkpoints.belongs_to(ck, config)
    (ck / "state.json").write_text(json.dumps(state))
    ev = RecordingEvents()
    assert train(TrainConfig(model=""), resume=run, events=ev)["state"] == "done"
    assert any("resumed from step-000007" in t for _, t in ev.logs)
    assert [m["step"] for m in runs.read_metrics(run) if "train_loss" in m] == list(range(1, 13))


# --- 2. impossible options are refused by the config ---------------------------------------------------

@pytest.mark.parametrize("option,value,words", [
    ("lr", -1.0, "above 0"), ("lr", 0.0, "above 0"), ("batch", 0, "at least 1"), ("iters", 0, "at least 1"),
    ("rank", 0, "at least 1"), ("valid_fraction", 1.5, "from 0 up to"), ("dropout", 1.0, "from 0 up to"),
    ("grad_accum", 0, "at least 1"), ("epochs", 0.0, "above 0"), ("min_lr_ratio", 2.0, "from 0 to 1"),
    ("num_layers", 0, "or -1"), ("lr", float("nan"), "above 0"), ("batch", 2.5, "whole number")])
def test_impossible_options_are_refused_with_their_range(option, value, words):
    with pytest.raises(ConfigError) as info:
        TrainConfig(model="m", **{option: value})
    assert f"--{option.replace('_', '-')} is" in str(info.value) and words in str(info.value)


def test_cli_refuses_impossible_options_before_loading(tmp_path):
    out = tmp_path / "never"
    for flag, value in (("--lr", "-1"), ("--batch", "0")):
        p = tl("train", "--model", tmp_path / "no-such-model", "--data", tmp_path / "no-data", "--out", out,
               flag, value)
        assert p.returncode == 2, p.stderr
        no_traceback(p)
        assert f"{flag} is" in p.stderr and "must be" in p.stderr
        assert "no-such-model" not in p.stderr  # refused before the model or the data were looked at
    assert not out.exists()


# --- 3. divergence -----------------------------------------------------------------------------------

def test_divergence_guard_judges_smoothed_losses_not_one_batch():
    from core.train.divergence import DivergenceGuard

    ln_v = math.log(882)
    healthy = DivergenceGuard(882, warmup=2)
    for step in range(1, 200):  # batches the model knows alternate with new ones: 0.003, 7.2, ...
        assert healthy.train_loss(step, 0.003 if step % 2 else 7.2) is None
    for step, v in enumerate([3.0, 2.5, 1.0, 0.9, 0.8, 5.0, 0.5], 1):
        assert healthy.valid_loss(step, v) is None  # noisy, never far above the start
    pinned = DivergenceGuard(882, warmup=2)
    why = [pinned.train_loss(s, 2.0 if s == 1 else ln_v) for s in range(1, 30)]
    first = next(i for i, w in enumerate(why, 1) if w)
    # step 6 is the first whose 5-step window is all at ln(V); 5 such steps in a row end it at step 10
    assert first == 10
    assert "uniform" in why[first - 1] and pinned.onset <= 3
    val = DivergenceGuard(882, warmup=2)
    assert val.valid_loss(0, 2.0) is None and val.valid_loss(10, 2.5) is None
    assert "far above" in val.valid_loss(20, 7.0) and val.onset == 11


def test_a_huge_learning_rate_stops_as_diverged_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    p = tl("train", "--model", demo_model_dir(), "--data", demo_data_dir(), "--out", run, "--iters", "60",
           *CLI_FAST[:6], "--lr", "1e6", "--warmup", "0", "--valid-every", "0", "--checkpoint-every", "1",
           "--seed", "3")
    assert p.returncode == 1, p.stderr[-2000:]
    no_traceback(p)
    assert "diverged" in p.stderr and "Lower the learning rate" in p.stderr and "--lr 100000" in p.stderr
    status = runs.read_json(run / "status.json")
    assert status["state"] == "diverged" and "uniform" in status["error"]
    assert json.loads(p.stdout.strip().splitlines()[-1])["state"] == "diverged"
    assert status["step"] < 60
    # checkpoints from the divergence on are set aside; what is kept comes from before it
    kept = runs.latest_checkpoint(run)
    aside = sorted(d.name for d in (run / "checkpoints").iterdir() if d.name.startswith("diverged-"))
    assert aside and (kept is None or int(kept.name[5:]) < int(aside[0].split("-")[-1]))
    assert runs.RunInfo.load(run).state == "diverged"


def test_a_healthy_run_with_bimodal_batches_is_not_flagged(tmp_path):
    ev = RecordingEvents()
    res = train(cfg(tmp_path / "run", iters=30, valid_every=10), events=ev)
    losses = [v for _, v in ev.series("train_loss")]
    assert max(losses) > 5 * min(losses)  # the batches really are that different
    assert res["state"] == "done"
    assert runs.read_json(tmp_path / "run" / "status.json")["state"] == "done"


# --- 4. checkpoints are verified on load -------------------------------------------------------------

def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["adapters", "optimizer", "state"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_used(stopped_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    newest = run / "checkpoints" / "step-000007"
    assert newest.is_dir() and (run / "checkpoints" / "step-000006").is_dir()
    if damage == "state":
        (newest / "state.json").write_text("")
    else:
        _truncate(newest / f"{damage}.safetensors")
    ev = RecordingEvents()
    res = train(TrainConfig(model=""), resume=run, events=ev)
    assert res["state"] == "done"
    warnings = [t for lvl, t in ev.logs if lvl == "warning" and "damaged" in t]
    assert warnings and "step-000007" in warnings[0] and "damaged-step-000007" in warnings[0]
    assert any("resumed from step-000006" in t for _, t in ev.logs)
    assert (run / "checkpoints" / "damaged-step-000007").is_dir()  # set aside, not deleted
    steps = [m["step"] for m in runs.read_metrics(run) if "train_loss" in m]
    assert steps == list(range(1, 13))


def test_checkpoints_record_sizes_and_checksums(stopped_run):
    ck = runs.latest_checkpoint(stopped_run)
    state = json.loads((ck / "state.json").read_text())
    assert set(state["files"]) >= {"adapters.safetensors", "optimizer.safetensors"}
    rec = state["files"]["adapters.safetensors"]
    assert rec["size"] == (ck / "adapters.safetensors").stat().st_size and len(rec["sha256"]) == 64
    assert checkpoints.problem(ck) is None


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_damaged_run_adapter_names_the_file_and_a_checkpoint(stopped_run, tmp_path, command):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    _truncate(run / "adapters.safetensors")
    if command == "eval":
        p = tl("eval", run, "--limit", "1")
    else:
        p = tl("export", run, "--gguf", tmp_path / "out.gguf")
    assert p.returncode == 1, p.stderr[-2000:]
    no_traceback(p)
    assert f"{run / 'adapters.safetensors'} is damaged" in p.stderr
    assert "step-000007" in p.stderr  # the checkpoint it can be taken from
    assert not (tmp_path / "out.gguf").exists()


# --- 5. one damaged run never blanks the list ----------------------------------------------------------

def _fake_run(root: Path, name: str, config=None, status=None, metrics: bytes | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config if config is not None else
                                              {"model": "m", "data": ["d.jsonl"], "iters": 10}))
    if status is not None:
        (d / "status.json").write_text(status if isinstance(status, str) else json.dumps(status))
    if metrics is not None:
        (d / "metrics.jsonl").write_bytes(metrics)
    return d


def test_damaged_runs_are_listed_as_damaged_and_the_others_as_usual(tmp_path):
    root = tmp_path / "runs"
    _fake_run(root, "20250101-000000-good", status={"state": "done", "step": 10, "total": 10},
              metrics=b'{"step": 1, "train_loss": 2.0}\n{"step": 10, "train_loss": 1.0}\n')
    _fake_run(root, "20250101-000001-status-list", status=[1, 2])
    _fake_run(root, "20250101-000002-bad-step", status={"state": "done", "step": "ten"})
    _fake_run(root, "20250101-000003-ff-metrics", status={"state": "done", "step": 2, "total": 2},
              metrics=b'{"step": 1, "train_loss": 2.0}\n\xff\xfe{"step": 2}\n{"step": 2, "train_loss": 1.5}\n')
    _fake_run(root, "20250101-000004-data-5", config={"model": "m", "data": 5})
    _fake_run(root, "20250101-000005-not-json", status="{oops")
    (root / "20250101-000006-config-list").mkdir()
    (root / "20250101-000006-config-list" / "config.json").write_text("[]")
    infos = {i.name: i for i in runs.list_runs(root, metrics=True)}
    assert len(infos) == 7
    good = infos["20250101-000000-good"]
    assert good.state == "done" and good.steps == 10 and good.series("train_loss")[1][-1] == 1.0 and not good.problem
    ff = infos["20250101-000003-ff-metrics"]
    assert ff.state == "done" and ff.series("train_loss") == ([1, 2], [2.0, 1.5])  # the bad line skipped
    for name, words in (("status-list", "status.json holds a list"), ("bad-step", '"step" is "ten"'),
                        ("data-5", '"data" is 5'), ("not-json", "status.json is not valid JSON"),
                        ("config-list", "config.json holds a list")):
        info = next(i for n, i in infos.items() if n.endswith(name))
        assert info.state == "damaged" and words in info.problem, (name, info.problem)
        # every property the History reads works on it
        _ = (info.title, info.created, info.base_model, info.dataset, info.total_steps, info.steps,
             info.series("train_loss"), info.final_valid_loss, info.resumable, info.exports)

    p = tl("runs", "--json", "--root", root)
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert len(rows) == 7
    good_row = rows["20250101-000000-good"]
    assert (good_row["state"], good_row["step"], good_row["total_steps"]) == ("done", 10, 10)
    assert "problem" not in good_row and good_row["path"] == str(root / "20250101-000000-good")
    assert rows["20250101-000004-data-5"]["state"] == "damaged" and '"data" is 5' in rows["20250101-000004-data-5"]["problem"]
    for r in rows.values():
        assert {"name", "path", "state", "step", "total_steps"} <= set(r)
        # a run folder's states (status.json's "state"; "interrupted": said "running" but its process is gone)
        assert r["state"] in ("running", "done", "cancelled", "failed", "diverged", "interrupted", "new", "damaged",
                              "unknown")
    p = tl("runs", "--root", root)
    assert p.returncode == 0 and "damaged" in p.stdout and "20250101-000000-good  done  step 10/10" in p.stdout


# --- 7. leftovers: a full disk during a checkpoint -------------------------------------------------------

def test_disk_full_during_a_checkpoint_leaves_no_part_folder_and_says_failed(tmp_path, monkeypatch):
    import mlx.core as mx

    real_save = mx.save_safetensors
    full = {"on": False}

    def save(path, arrays, *a, **k):
        if "optimizer" in str(path):  # the checkpoint's second file: the disk fills up half-way
            full["on"] = True
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, arrays, *a, **k)

    real_write_json = runs.files.write_json  # set_status and update_json look it up in core.runs.files

    def write_json(dest, obj):
        if full["on"]:  # from now on no new file can be made: the status must go into the reserve
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_json(dest, obj)

    monkeypatch.setattr(mx, "save_safetensors", save)
    monkeypatch.setattr(runs.files, "write_json", write_json)
    run = tmp_path / "run"
    with pytest.raises(TuneloomError) as info:
        train(cfg(run, iters=12, compile=False), events=RecordingEvents())
    assert "disk" in str(info.value) and "full" in str(info.value) and "step 3" in str(info.value)
    assert "Free some space" in info.value.hint
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".part")]
    status = runs.read_json(run / "status.json")
    assert status["state"] == "failed" and "full" in status["error"]


# --- 6. export targets --------------------------------------------------------------------------------

def _export_cli(source, *args):
    return tl("export", source, *args)


def test_export_never_writes_into_its_own_source(done_run, tmp_path):
    before = snapshot(done_run)
    p = _export_cli(done_run, "--gguf", done_run / "config.json")
    assert p.returncode == 1
    no_traceback(p)
    assert "inside the run folder being exported" in p.stderr and "exports" in p.stderr
    assert snapshot(done_run) == before  # the run's config is still its own: it resumes and is listed
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir(), model)
    weights = (model / "model.safetensors").read_bytes()
    p = _export_cli(model, "--gguf", model / "model.safetensors")
    assert p.returncode == 1 and "inside the model folder being exported" in p.stderr
    no_traceback(p)
    assert (model / "model.safetensors").read_bytes() == weights


def test_export_target_checks_come_before_any_work(done_run, tmp_path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    t0 = time.monotonic()
    p = _export_cli(done_run, "--gguf", folder)
    assert p.returncode == 1 and "is a folder" in p.stderr and str(folder / "model-f16.gguf") in p.stderr
    assert list(folder.iterdir()) == []
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    p = _export_cli(done_run, "--gguf", notes, "--force")
    assert p.returncode == 1 and "is not a GGUF file" in p.stderr and notes.read_text() == "mine"
    assert time.monotonic() - t0 < 120


def test_a_second_export_keeps_the_first_ones_files_unless_forced(done_run, tmp_path):
    out = tmp_path / "out"
    p = _export_cli(done_run, "--gguf", out / "a.gguf")
    assert p.returncode == 0, p.stderr[-2000:]
    first = snapshot(out)
    assert set(first) == {"a.gguf", "a.Modelfile"}
    p = _export_cli(done_run, "--gguf", out / "a.gguf", "--quant", "q8_0")
    assert p.returncode == 1 and "already exists" in p.stderr and "--force" in p.stderr
    assert snapshot(out) == first
    p = _export_cli(done_run, "--gguf", out / "b.gguf", "--quant", "q8_0")  # a second GGUF, its own Modelfile
    assert p.returncode == 0, p.stderr[-2000:]
    def frm(mf):
        return next(x for x in mf.read_text().splitlines() if x.startswith("FROM "))

    assert frm(out / "a.Modelfile") == "FROM ./a.gguf" and frm(out / "b.Modelfile") == "FROM ./b.gguf"
    assert "-f a.Modelfile" in (out / "a.Modelfile").read_text().splitlines()[0]
    assert snapshot(out)["a.gguf"] == first["a.gguf"]
    # a Modelfile of another GGUF is not replaced either
    p = _export_cli(done_run, "--gguf", out / "c.gguf", "--modelfile", out / "a.Modelfile")
    assert p.returncode == 1 and "the Modelfile of another GGUF" in p.stderr
    assert snapshot(out)["a.Modelfile"] == first["a.Modelfile"]
    p = _export_cli(done_run, "--gguf", out / "a.gguf", "--quant", "q8_0", "--force")
    assert p.returncode == 0, p.stderr[-2000:]
    assert snapshot(out)["a.gguf"] != first["a.gguf"]


@pytest.mark.parametrize("code,words,not_words", [(errno.EROFS, "read-only", "full"),
                                                  (errno.EACCES, "no permission", "full"),
                                                  (errno.ENOSPC, "is full", "read-only")])
def test_an_unwritable_export_folder_is_named_for_what_it_is(tmp_path, monkeypatch, code, words, not_words):
    from core.export import target as export_target

    def refuse(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(export_target.tempfile, "mkstemp", refuse)
    with pytest.raises(TuneloomError) as info:
        export_target.check_writable(tmp_path, "the GGUF")
    assert words in str(info.value) and not_words not in str(info.value)


# --- 7. leftovers of a killed export ---------------------------------------------------------------------

def test_the_next_export_removes_what_a_killed_one_left(done_run, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".model.gguf.{dead.pid}.k2j3.part.gguf"
    stale.write_bytes(b"GGUF" + b"\0" * 1000)
    stale_fuse = out / f".tuneloom-fuse-{dead.pid}-abc"
    (stale_fuse / "fused").mkdir(parents=True)
    live = out / f".other.gguf.{os.getpid()}.x1y2.part.gguf"  # a running export's: left alone
    live.write_bytes(b"GGUF")
    p = _export_cli(done_run, "--gguf", out / "model.gguf")
    assert p.returncode == 0, p.stderr[-2000:]
    assert not stale.exists() and not stale_fuse.exists() and live.exists()
    assert sorted(x.name for x in out.iterdir()) == sorted([live.name, "model.gguf", "model.Modelfile"])


# --- 8. one model-folder check for fetch, train and export -------------------------------------------------

def test_a_config_that_disagrees_with_the_weights_is_refused_by_fetch_train_and_export(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir(), model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "hidden_size": 256}))
    words = "config.json says hidden_size 256, but the weights are 128 wide"
    p = tl("fetch", model)
    assert p.returncode == 1 and words in p.stdout + p.stderr and "ready to train" not in p.stdout + p.stderr
    p = tl("train", "--model", model, "--data", demo_data_dir(), "--out", tmp_path / "run", "--iters", "2",
           *CLI_FAST)
    assert p.returncode == 1 and words in p.stderr
    no_traceback(p)
    p = tl("export", model, "--gguf", tmp_path / "out" / "m.gguf")
    assert p.returncode == 1 and words in p.stderr
    no_traceback(p)
    assert not (tmp_path / "out" / "m.gguf").exists()


def test_export_reads_its_gguf_back_with_llama_cpp_and_never_says_ok_for_one_it_cannot_load(done_run, tmp_path,
                                                                                          monkeypatch):
    from core.export import pipeline as ex
    from core.export import llamacpp

    if not llamacpp.available():
        pytest.skip("llama-cpp-python is not installed here")
    res = ex.export(done_run, gguf=tmp_path / "good.gguf")
    assert res["loads_in_llama_cpp"] is True

    class Refuses:
        def __init__(self, *a, **k):
            raise ValueError("Failed to load model from file")

    monkeypatch.setattr(llamacpp, "LlamaCppModel", Refuses)
    with pytest.raises(TuneloomError) as info:
        ex.export(done_run, gguf=tmp_path / "bad.gguf")
    assert "llama.cpp cannot load it" in str(info.value) and "bad.gguf" in str(info.value)


# --- 9. the smaller points --------------------------------------------------------------------------------

def test_ssh_gets_host_names_after_double_dash(monkeypatch):
    from core import distributed as dist

    seen = []
    monkeypatch.setattr(dist.subprocess, "run", lambda argv, **k: seen.append(argv) or
                        subprocess.CompletedProcess(argv, 0, "", ""))
    dist._ssh(dist.Host("-oProxyCommand=touch /tmp/pwned"), "true", 1)
    argv = seen[0]
    assert argv.index("--") < argv.index("-oProxyCommand=touch /tmp/pwned")
    assert " -- " in dist.copy_command(dist.Host("-oX"), "/data/a.jsonl")


def test_a_300_character_name_is_refused_cleanly(tmp_path):
    p = tl("train", "--model", demo_model_dir(), "--data", demo_data_dir(), "--name", "n" * 300, "--iters", "2")
    assert p.returncode == 2
    no_traceback(p)
    assert "--name is 300 characters long, must be at most 100" in p.stderr


def test_a_server_that_is_not_ollama_is_not_called_too_old(tmp_path):
    import http.server
    import threading

    from core.export import ollama as ol

    class NotOllama(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"status": "ok"}' if self.path == "/api/version" else b"<html>hello</html>"
            self.send_response(200 if self.path == "/api/version" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotOllama)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    try:
        with pytest.raises(ol.OllamaError) as info:
            ol.register_model(gguf, "tuned", template="{{ .Prompt }}", stops=[],
                              host=f"http://127.0.0.1:{srv.server_address[1]}")
    finally:
        srv.shutdown()
    assert "not Ollama" in str(info.value) and "too old" not in info.value.user_message()


def test_plain_http_to_a_host_elsewhere_is_warned():
    from core.export.ollama import plain_http_warning

    assert "plain HTTP" in plain_http_warning("http://10.0.0.5:11434")
    assert "plain HTTP" in plain_http_warning("http://ollama.example.com:11434")
    for local in ("http://127.0.0.1:11434", "http://localhost:11434", "http://[::1]:11434", "https://x.example"):
        assert plain_http_warning(local) is None, local


def test_a_wrong_token_is_not_called_gated(tmp_path, monkeypatch):
    from core import hub
    from tests.fixtures.hub_server import HubServer, use_hub_server
    from tests.fixtures.tiny_models import cached_tiny_model

    tiny = cached_tiny_model("qwen2.5", tmp_path / "tiny")
    with HubServer(lifetime=1800) as srv:
        srv.add_repo("tiny/gated", tiny, gated=True, token="hf_right")
        use_hub_server(srv, tmp_path / "hf-home", monkeypatch)
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
        with pytest.raises(hub.HubError) as info:
            hub.fetch_model("tiny/gated", validate=False)
        assert "refused your Hugging Face token" in str(info.value)
        assert not isinstance(info.value, hub.GatedModelError) and "gated model" not in str(info.value)
        monkeypatch.delenv("HF_TOKEN")  # no token at all: that is the gated message, as before
        with pytest.raises(hub.GatedModelError):
            hub.fetch_model("tiny/gated", validate=False)


# --- 10. kills at random points ------------------------------------------------------------------------------

@pytest.mark.slow  # three killed-and-resumed CLI runs: about a minute on 2 cores
def test_kills_at_random_points_resume_to_a_complete_run(tmp_path):
    """SIGKILL `tuneloom train` at a random step and a random moment within it (checkpoints are written every
    second step, so some kills land in a checkpoint write), then resume: the run ends done, with every step
    once, no half-written checkpoint, no lock held, and a second resume says it is finished."""
    import random

    cmd = [sys.executable, "-m", "app.cli", "train"]
    for seed in (11, 12, 13):
        rng = random.Random(seed)
        run = tmp_path / f"run-{seed}"
        args = ["--model", str(demo_model_dir()), "--data", str(demo_data_dir()), "--out", str(run), "--iters", "16",
                *CLI_FAST[:6], "--checkpoint-every", "2", "--valid-every", "0", "--seed", str(seed)]
        target = rng.randint(1, 13)
        proc = subprocess.Popen(cmd + args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        try:
            while True:
                steps = [m.get("step", 0) for m in runs.read_metrics(run) if "train_loss" in m]
                if steps and max(steps) >= target:
                    break
                assert proc.poll() is None, "finished before it could be killed"
                assert time.monotonic() < deadline
                time.sleep(0.005)
            time.sleep(rng.random() * 0.2)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(30)
        assert not runs.run_locked_by_other(run)  # the kill took the lock with it
        assert runs.RunInfo.load(run).state in ("interrupted", "done")
        res = subprocess.run(cmd + ["--resume", str(run)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, (seed, target, res.stderr[-2000:])
        assert [m["step"] for m in runs.read_metrics(run) if "train_loss" in m] == list(range(1, 17)), seed
        assert runs.read_json(run / "status.json")["state"] == "done"
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".part")]
        again = subprocess.run(cmd + ["--resume", str(run)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "is finished" in again.stderr


def test_a_validation_loss_far_above_its_start_stops_the_run_and_sets_aside_later_checkpoints(tmp_path,
                                                                                              monkeypatch):
    import core.train.losses as ct  # the module whose evaluate_loss the trainer calls

    real = ct.evaluate_loss
    calls = {"n": 0}

    def climbing(*a, **k):  # the third validation (step 8) is far above the first
        calls["n"] += 1
        v = real(*a, **k)
        return v * 10 + 5 if calls["n"] >= 3 else v

    monkeypatch.setattr(ct, "evaluate_loss", climbing)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        train(cfg(run, iters=12, valid_every=4, checkpoint_every=2), events=RecordingEvents())
    assert "validation loss at step 8" in str(info.value) and "far above" in str(info.value)
    assert "step 4" in info.value.hint and "Lower the learning rate" in info.value.hint
    assert runs.read_json(run / "status.json")["state"] == "diverged"
    assert runs.latest_checkpoint(run).name == "step-000004"  # the last one whose validation was fine
    assert (run / "checkpoints" / "diverged-step-000006").is_dir()
