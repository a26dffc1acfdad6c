"""core.train.group: a run on several Macs as a job (two ranks on 127.0.0.1, ring backend).

The argv it gives the ranks rebuilds the same TrainConfig through the CLI's own code, and the
follower reports every step of rank 0's metrics.jsonl once, in order, as the in-process trainer does."""
from __future__ import annotations

import json
import signal
import subprocess
import threading
from dataclasses import asdict
from pathlib import Path

import pytest

from core import distributed as dist
from core import runs
from core.events import Cancelled, CancelToken, RecordingEvents, TuneloomError
from core.train.group import group_train, train_args
from core.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "resources" / "demo" / "model"
DEMO_DATA = ROOT / "resources" / "demo" / "data" / "train.jsonl"


def _config_from_cli(monkeypatch, argv: list[str]) -> TrainConfig:
    """The TrainConfig `tuneloom train ARGV` would train: cmd_train itself, with the trainer replaced."""
    import core.train
    from app import cli

    got = {}
    monkeypatch.setattr(core.train, "train", lambda cfg, **kw: got.setdefault("cfg", cfg) and {})
    before = signal.getsignal(signal.SIGINT)
    try:
        a = cli.build_parser().parse_args(["train", *argv])
        assert a.func(a) == 0
    finally:
        signal.signal(signal.SIGINT, before)
    return got["cfg"]


@pytest.mark.parametrize("cfg", [
    TrainConfig(model="/m", data=["/d/a.jsonl"], out="/runs/x"),
    TrainConfig(model="/m", data=["/d/a.jsonl", "/d/b.csv"], out="/runs/y", epochs=2.5, lr=2e-4, rank=16,
                alpha=32.0, grad_checkpoint=True, targets="attention"),
    TrainConfig(model="/m", data=["/d/a.jsonl"], out="/runs/z", name="my run", iters=7, rank=4, alpha=8.5,
                dropout=0.05, num_layers=2, lr=3.3e-5, warmup=0, min_lr_ratio=0.05, weight_decay=0.01, batch=2,
                grad_accum=3, max_seq_len=256, seed=5, mask_prompt=False, last_turn_only=True, dora=True,
                valid_every=0, valid_batches=-1, checkpoint_every=3, valid_fraction=0.2, skip_invalid=True,
                mapping={"prompt": "Frage", "answer": "Antwort"}, user_template="- {name}",
                assistant_template="{types}", system_prompt="Be brief.", pack=True, compile=False),
    # the options whose flags the CLI writes itself: a text, a switch, NAME=VALUE pairs (--fill)
    TrainConfig(model="/m", data=["/d/a.jsonl"], out="/runs/w", use="chosen", chunk=True,
                fill={"name": "Tuneloom", "place": "a=b"}, early_stop=2, test_fraction=0.0),
])
def test_train_args_rebuild_the_same_config(monkeypatch, cfg):
    back = _config_from_cli(monkeypatch, train_args(cfg))
    assert asdict(back) == asdict(cfg)


def test_train_args_leave_epochs_out_when_the_steps_are_given(monkeypatch):
    # the parser takes --iters or --epochs; with a step count the passes do not change the run
    cfg = TrainConfig(model="/m", data=["/d"], out="/o", iters=9, epochs=3.0)
    args = train_args(cfg)
    assert "--iters=9" in args and not any(a.startswith("--epochs") for a in args)
    back = _config_from_cli(monkeypatch, args)
    assert back.iters == 9 and asdict(back) == {**asdict(cfg), "epochs": TrainConfig(model="").epochs}


def _hostfile(tmp_path, text="127.0.0.1\n127.0.0.1\n") -> Path:
    p = tmp_path / "hosts.txt"
    p.write_text(text)
    return p


def _cfg(out: Path, iters: int = 4) -> TrainConfig:
    return TrainConfig(model=str(DEMO_MODEL), data=[str(DEMO_DATA)], out=str(out), iters=iters, batch=4,
                       valid_every=2, valid_batches=2, checkpoint_every=2, seed=3)


@pytest.mark.timeout(900)  # a bound for a group that never ends, not a speed: beside two other suites (load 15-20) one took over 300 s
def test_two_ranks_report_every_step_once_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the ranks run `python -m app.cli` here
    run = tmp_path / "run"
    ev = RecordingEvents()
    res = group_train(_cfg(run), _hostfile(tmp_path), events=ev)
    assert res["run_dir"] == str(run) and res["total_steps"] == 4 and res["state"] == "done"
    assert res["steps"] == 4 and res["valid_loss"] is not None

    on_disk = runs.read_metrics(run)
    train = [(m["step"], m["train_loss"]) for m in on_disk if "train_loss" in m]
    valid = [(m["step"], m["valid_loss"]) for m in on_disk if "valid_loss" in m]
    assert [s for s, _ in train] == [1, 2, 3, 4]
    assert ev.series("train_loss") == train  # every step once, in order, the values rank 0 wrote
    assert ev.series("valid_loss") == valid and valid[0][0] == 0
    assert [s for s, _ in ev.series("learning_rate")] == [1, 2, 3, 4]
    texts = [t for _, t in ev.logs]
    assert "rank 0 (127.0.0.1): ok" in texts and "rank 1 (127.0.0.1): ok" in texts
    assert any("training on 2 Macs" in t for t in texts)
    info = runs.RunInfo.load(run)
    assert info.state == "done" and info.steps == 4


@pytest.mark.timeout(900)  # a bound for a group that never ends, not a speed: beside two other suites (load 15-20) one took over 300 s
def test_stopping_a_group_keeps_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    ev = RecordingEvents()
    cancel = CancelToken()
    seen = threading.Event()
    orig = ev.metric

    def metric(name, step, value):
        orig(name, step, value)
        if name == "train_loss" and step >= 2:
            cancel.cancel()
            seen.set()

    ev.metric = metric
    with pytest.raises(Cancelled) as e:
        group_train(_cfg(run, iters=200), _hostfile(tmp_path), events=ev, cancel=cancel)
    assert seen.is_set()
    res = e.value.result
    assert res["state"] == "cancelled" and 2 <= res["steps"] < 200 and res["total_steps"] == 200
    info = runs.RunInfo.load(run)
    assert info.state == "cancelled" and info.resumable


@pytest.mark.parametrize("text, words", [
    ("127.0.0.1\n", "a group needs two or more"),
    ("127.0.0.1\na b c\n", "line 2"),
])
def test_a_bad_host_file_is_explained(tmp_path, text, words):
    with pytest.raises(dist.GroupError) as e:
        group_train(_cfg(tmp_path / "run"), _hostfile(tmp_path, text))
    assert words in str(e.value)
    with pytest.raises(dist.GroupError) as e:
        group_train(_cfg(tmp_path / "run"), tmp_path / "nowhere.txt")
    assert "Cannot read the host file" in str(e.value)


def test_a_host_that_cannot_be_reached_stops_before_the_launch(tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "_ssh", lambda host, command, timeout: subprocess.CompletedProcess(
        [], 255, "", f"ssh: connect to host {host.ssh} port 22: Operation timed out"))
    launched = []
    monkeypatch.setattr(dist, "launch", lambda *a, **k: launched.append(a))
    ev = RecordingEvents()
    with pytest.raises(dist.GroupError) as e:
        group_train(_cfg(tmp_path / "run"), _hostfile(tmp_path, "127.0.0.1 10.0.0.1\nmini.local 192.0.2.1\n"),
                    events=ev)
    assert "1 of 2 hosts are not ready" in str(e.value) and "cannot be reached" in str(e.value)
    assert "ssh mini.local" in e.value.hint
    assert not launched
    assert ev.logs[0] == ("info", "rank 0 (127.0.0.1): ok")
    assert ev.logs[1][0] == "warning" and ev.logs[1][1].startswith("rank 1 (mini.local): cannot be reached")


def test_stopped_while_the_macs_are_checked_starts_nothing(tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr(dist, "launch", lambda *a, **k: launched.append(a))
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled) as e:
        group_train(_cfg(tmp_path / "run"), _hostfile(tmp_path), cancel=cancel)
    assert not launched and e.value.result["steps"] == 0 and e.value.result["total_steps"] == 4


def test_a_rank_lost_after_the_run_finished_says_the_run_is_complete(tmp_path, monkeypatch, capsys):
    """Seen under load: a rank killed after rank 0 had finished and saved the run. The group still
    failed (exit 1), but offering to resume from a checkpoint was wrong: the run was complete."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": str(DEMO_MODEL), "data": [str(DEMO_DATA)], "iters": 4}))
    monkeypatch.setattr(dist, "check_hosts", lambda hosts, paths, *a, **k: [])

    def launch(hosts, args, *, run_dir, **k):  # rank 0 finished and wrote its status, then rank 1 was killed
        ck = Path(run_dir) / "checkpoints" / "step-2"  # a kept checkpoint, which the old message offered
        ck.mkdir(parents=True, exist_ok=True)
        (ck / "state.json").write_text('{"step": 2}')
        runs.set_status(run_dir, "done", steps=4, total=4)
        return dist.GroupResult(1, "Rank 1 on 127.0.0.1 was killed: the group stopped.", 1, "127.0.0.1")
    monkeypatch.setattr(dist, "launch", launch)

    with pytest.raises(TuneloomError) as e:  # the engine (the window's Train page)
        group_train(_cfg(run), _hostfile(tmp_path), resume=run)
    assert "Rank 1" in str(e.value)
    assert "finished after all 4 steps" in e.value.hint and "nothing to resume" in e.value.hint
    assert "checkpoint" not in e.value.hint

    from app import cli  # the command line
    rc = cli.main(["train", "--resume", str(run), "--hosts", str(_hostfile(tmp_path))])
    err = capsys.readouterr().err
    assert rc == 1 and "Rank 1 on 127.0.0.1 was killed" in err
    assert "finished after all 4 steps" in err and "resume it with" not in err


def test_a_rank_lost_mid_run_names_the_kept_checkpoint_and_the_resume(tmp_path, monkeypatch, capsys):
    """The other side of the test above: the run is still running when a rank dies. The engine and
    the command line both name the latest whole checkpoint (one with state.json; a half-written one
    does not count) and how to resume."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": str(DEMO_MODEL), "data": [str(DEMO_DATA)], "iters": 8}))
    monkeypatch.setattr(dist, "check_hosts", lambda hosts, paths, *a, **k: [])
    checkpoints = []

    def launch(hosts, args, *, run_dir, **k):
        for step, whole in checkpoints:
            ck = Path(run_dir) / "checkpoints" / f"step-{step:08d}"
            ck.mkdir(parents=True, exist_ok=True)
            if whole:
                (ck / "state.json").write_text(json.dumps({"step": step}))
        runs.set_status(run_dir, "running", step=5, total=8)
        return dist.GroupResult(1, "Rank 1 on 127.0.0.1 was killed: the group stopped.", 1, "127.0.0.1")
    monkeypatch.setattr(dist, "launch", launch)
    from app import cli

    with pytest.raises(TuneloomError) as e:  # no checkpoint yet
        group_train(_cfg(run), _hostfile(tmp_path), resume=run)
    assert e.value.hint.startswith("The run has no checkpoint yet: Resume"), e.value.hint

    checkpoints[:] = [(2, True), (4, True), (6, False)]  # step 6 was being written when the rank died
    with pytest.raises(TuneloomError) as e:
        group_train(_cfg(run), _hostfile(tmp_path), resume=run)
    assert e.value.hint.startswith("The run keeps its checkpoint from step 4: Resume"), e.value.hint
    assert "nothing to resume" not in e.value.hint
    rc = cli.main(["train", "--resume", str(run), "--hosts", str(_hostfile(tmp_path))])
    err = capsys.readouterr().err
    assert rc == 1 and "Rank 1 on 127.0.0.1 was killed" in err
    assert f"The run keeps its checkpoint from step 4: resume it with tuneloom train --resume {run} --hosts" in err
