"""Preference tuning (DPO, ORPO) on several Macs: two ranks on 127.0.0.1 (ring backend) against one process.

The batch of 3 pairs splits 2 + 1 between the ranks, so a group that averaged its ranks' means would
be caught: every figure of a step must be the one-process figure over the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from core import runs
from core.demo import world as demo_world
from core.events import RecordingEvents
from core.paths import demo_model_dir

ROOT = Path(__file__).resolve().parents[1]
TUNELOOM = [sys.executable, "-m", "app.cli"]
STEP_KEYS = ("train_loss", "reward_margin", "reward_accuracy", "logp_chosen", "logp_rejected")
VALID_KEYS = ("valid_loss", "valid_reward_margin", "valid_reward_accuracy", "valid_logp_chosen",
              "valid_logp_rejected")
# the settings both sides train with: the batch of 3 pairs is shared 2 + 1; warm-up 0 so that the
# command's fit to the data changes nothing
DPO = ["--method", "dpo", "--beta", "0.1", "--iters", "4", "--batch", "3", "--lr", "1e-3", "--rank", "8",
       "--alpha", "16", "--max-seq-len", "96", "--warmup", "0", "--valid-every", "2", "--valid-batches", "2",
       "--checkpoint-every", "2", "--test-fraction", "0", "--seed", "2"]


@pytest.fixture(scope="module")
def pref_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("group-pref")
    tr, va, _ = demo_world.preference_dataset(n_train=24, n_valid=7)
    data = root / "data"
    data.mkdir()
    for name, rows in (("train.jsonl", tr), ("valid.jsonl", va)):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    hosts = root / "hosts.txt"
    hosts.write_text("127.0.0.1\n127.0.0.1\n")
    return data, hosts


def _env(tmp_path, **extra):
    return {**os.environ, "TUNELOOM_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1", **extra}


def _tl(*args, env, timeout=600):
    return subprocess.run([*TUNELOOM, *map(str, args)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def one_process(pref_data, tmp_path_factory):
    """The reference: the same DPO run in one process."""
    data, _ = pref_data
    tmp = tmp_path_factory.mktemp("one")
    run = tmp / "run"
    r = _tl("train", "--model", demo_model_dir(), "--data", data, *DPO, "--out", run, env=_env(tmp))
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def _by_step(metrics: list[dict], key: str) -> dict[int, float]:
    return {m["step"]: m[key] for m in metrics if key in m}


def _same_curves(got: list[dict], want: list[dict], keys=STEP_KEYS + VALID_KEYS) -> None:
    """Every figure of every step equal to the one-process one: the loss and rewards to 1e-5, the summed
    log-probabilities (hundreds of nats) to 1e-5 of their size."""
    for key in keys:
        a, b = _by_step(want, key), _by_step(got, key)
        assert sorted(a) == sorted(b) and a, key
        for step in a:
            if key == "reward_accuracy" and step == 1:
                # the adapter starts as the identity: every pair's margin is 0 in one process and a rounding
                # error of either sign on a rank (its batch is padded differently), so the share of wins is
                # not defined at step 1; the margin itself is compared
                continue
            tol = dict(rel=1e-5) if "logp" in key else dict(abs=1e-5)
            assert b[step] == pytest.approx(a[step], **tol), (key, step, a, b)


@pytest.mark.timeout(900)
def test_a_two_rank_dpo_run_gives_the_one_process_figures(pref_data, one_process, tmp_path):
    data, hosts = pref_data
    run = tmp_path / "two"
    r = _tl("train", "--hosts", hosts, "--model", demo_model_dir(), "--data", data, *DPO, "--out", run,
            env=_env(tmp_path))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "training on 2 Macs" in r.stderr
    final = json.loads(r.stdout.strip().splitlines()[-1])
    assert final["state"] == "done" and final["hosts"] == 2 and final["steps"] == 4
    got = runs.read_metrics(run)
    assert [m["step"] for m in got if "train_loss" in m] == [1, 2, 3, 4]
    want = runs.read_metrics(one_process)
    _same_curves(got, want)
    assert _by_step(got, "trained_tokens") == _by_step(want, "trained_tokens")
    assert json.loads((run / "config.json").read_text())["method"] == "dpo"
    # rank 0 wrote an ordinary run: its adapters, checkpoints, and the same best step as one process
    assert (run / "adapters.safetensors").exists() and runs.latest_checkpoint(run) is not None
    best = runs.read_json(one_process / "status.json")["best_step"]
    assert best == 4 and runs.read_json(run / "status.json")["best_step"] == best  # (step 0 is the base model)
    assert (run / runs.BEST_ADAPTERS).exists()
    assert runs.RunInfo.load(run).state == "done"


@pytest.mark.timeout(900)
def test_orpo_in_a_group_with_accumulation_gives_the_one_process_figures(pref_data, tmp_path, monkeypatch):
    from core.train.group import group_train
    from core.train import TrainConfig, train

    data, hosts = pref_data
    monkeypatch.chdir(ROOT)  # the ranks run `python -m app.cli` here
    kw = dict(model=str(demo_model_dir()), data=[str(data)], method="orpo", orpo_lambda=0.5, iters=2, batch=3,
              grad_accum=2, lr=1e-3, rank=8, alpha=16.0, max_seq_len=96, warmup=0, valid_every=0,
              valid_batches=2, checkpoint_every=0, test_fraction=0.0, seed=2)
    train(TrainConfig(out=str(tmp_path / "one"), **kw))
    ev = RecordingEvents()
    res = group_train(TrainConfig(out=str(tmp_path / "two"), **kw), hosts, events=ev)
    assert res["state"] == "done" and res["steps"] == 2 and res["hosts"] == 2
    want, got = runs.read_metrics(tmp_path / "one"), runs.read_metrics(tmp_path / "two")
    _same_curves(got, want)
    assert _by_step(got, "trained_tokens") == _by_step(want, "trained_tokens")
    # the window hears a group's reward figures as it hears a run on this Mac
    for key in ("reward_margin", "reward_accuracy", "logp_chosen", "logp_rejected"):
        assert ev.series(key) == sorted(_by_step(got, key).items()), key


_KILL_RANK_1 = '''
import os
if os.environ.get("MLX_RANK") == "1":
    import signal
    from pathlib import Path

    import core.distributed as dist

    marker = Path(os.environ["TUNELOOM_TEST_KILL_MARKER"])
    at = int(os.environ["TUNELOOM_TEST_KILL_AT"])
    real, calls = dist.shard, []

    def shard(members, group):  # called once per step (no accumulation): die as step `at` begins
        calls.append(1)
        if len(calls) == at and not marker.exists():
            marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(members, group)

    dist.shard = shard
'''


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.timeout(900)
def test_a_group_dpo_run_killed_mid_run_resumes_to_the_one_process_curve(pref_data, one_process, tmp_path):
    data, hosts = pref_data
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_KILL_RANK_1)  # rank 1 kills itself as step 3 begins, once
    marker = tmp_path / "killed"
    env = _env(tmp_path, PYTHONPATH=os.pathsep.join([str(hook), str(ROOT), os.environ.get("PYTHONPATH", "")]),
               TUNELOOM_TEST_KILL_MARKER=str(marker), TUNELOOM_TEST_KILL_AT="3")
    run = tmp_path / "run"
    r = _tl("train", "--hosts", hosts, "--model", demo_model_dir(), "--data", data, *DPO, "--out", run, env=env)
    assert marker.exists(), (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 1, (r.stdout + r.stderr)[-3000:]
    assert "Rank 1 on 127.0.0.1" in r.stderr and f"--resume {run}" in r.stderr
    ck = runs.latest_checkpoint(run)
    assert ck is not None and json.loads((ck / "state.json").read_text())["step"] == 2
    assert [m["step"] for m in runs.read_metrics(run) if "train_loss" in m] == [1, 2]

    r = _tl("train", "--resume", run, "--hosts", hosts, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    got = runs.read_metrics(run)
    assert [m["step"] for m in got if "train_loss" in m] == [1, 2, 3, 4]  # one curve: no gap, no repeat
    _same_curves(got, runs.read_metrics(one_process))
    status = runs.read_json(run / "status.json")
    assert status["state"] == "done" and status["best_step"] == runs.read_json(one_process / "status.json")["best_step"]


def test_a_group_gets_a_preference_run_with_its_own_options(monkeypatch):
    """train_args leaves out what the command's preset for the run's method already gives: a DPO run's
    options that equal the supervised preset's (its learning rate, its batch) must still be passed."""
    from core.train.group import train_args
    from core.train import TrainConfig, preset_config
    from tests.test_group_train import _config_from_cli

    sft = preset_config("quick")
    for method in ("dpo", "orpo"):
        cfg = TrainConfig(model="/m", data=["/d/pairs.jsonl"], out="/runs/p", method=method, lr=sft["lr"],
                          batch=sft["batch"], beta=0.2, orpo_lambda=0.3, label_smoothing=0.1, iters=5)
        back = _config_from_cli(monkeypatch, train_args(cfg))
        assert asdict(back) == asdict(cfg), method
