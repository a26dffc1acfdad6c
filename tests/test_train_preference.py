"""Preference tuning (DPO, ORPO) end to end on the demo model: the CLI, metrics, resume and evaluation."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import demo_world, runs
from core.events import Cancelled, CancelToken, RecordingEvents
from core.paths import demo_model_dir
from core.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(rank=8, alpha=16.0, lr=1e-3, batch=8, max_seq_len=96, warmup=3, valid_every=0, checkpoint_every=5,
            seed=0)


def tl(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pref_data(tmp_path_factory):
    """The demo world's preference pairs: the right JSON record chosen, a neighbouring topic's rejected;
    the held-out pairs are on topics never trained on."""
    root = tmp_path_factory.mktemp("pref")
    tr, va, held = demo_world.preference_dataset(n_train=120, n_valid=16)
    data = root / "data"
    data.mkdir()
    _write(data / "train.jsonl", tr)
    _write(data / "valid.jsonl", va)
    return data, _write(root / "heldout.jsonl", held)


def test_dpo_from_the_cli_learns_the_preference_and_eval_reports_it(pref_data, tmp_path):
    data, held = pref_data
    run = tmp_path / "dpo"
    p = tl("train", "--model", demo_model_dir(), "--data", data, "--out", run, "--method", "dpo", "--beta", "0.1",
           "--iters", 30, "--lr", "1e-3", "--rank", 8, "--alpha", 16, "--batch", 8, "--max-seq-len", 96,
           "--warmup", 3, "--valid-every", 10)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["method"] == "dpo"
    steps = [m for m in runs.read_metrics(run) if "train_loss" in m]
    assert len(steps) == 30
    for m in steps:
        for key in ("reward_margin", "reward_accuracy", "logp_chosen", "logp_rejected"):
            assert isinstance(m[key], float), (key, m)
    # DPO starts at the neutral loss log 2 (the adapter starts as the identity) and falls
    assert steps[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert sum(m["train_loss"] for m in steps[-5:]) / 5 < 0.5
    assert sum(m["reward_margin"] for m in steps[-5:]) > 0
    valid = [m for m in runs.read_metrics(run) if "valid_reward_accuracy" in m]
    assert valid and valid[-1]["valid_reward_accuracy"] >= 0.8

    p = tl("eval", run, "--data", held, "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    base, tuned = out["base"]["preference_accuracy"], out["tuned"]["preference_accuracy"]
    assert tuned >= 0.9 and tuned >= base + 0.2, (base, tuned)


def test_orpo_trains_the_chosen_answers_and_the_preference(pref_data, tmp_path):
    data, _ = pref_data
    ev = RecordingEvents()
    res = train(TrainConfig(model=str(demo_model_dir()), data=[str(data)], out=str(tmp_path / "orpo"),
                            method="orpo", orpo_lambda=0.5, iters=12, **FAST), events=ev)
    assert res["state"] == "done"
    loss = [v for _, v in ev.series("train_loss")]
    assert sum(loss[-3:]) < 0.65 * sum(loss[:3])  # the supervised part on the chosen answers
    assert [s for s, _ in ev.series("reward_accuracy")] == list(range(1, 13))


def test_chat_data_refuses_preference_tuning_with_the_fix(tmp_path):
    from core.data import DatasetError
    from core.paths import demo_data_dir

    with pytest.raises(DatasetError) as exc:
        train(TrainConfig(model=str(demo_model_dir()), data=[str(demo_data_dir())], out=str(tmp_path / "r"),
                          method="dpo", iters=2, **{**FAST, "valid_every": 0}))
    assert "pairs of answers" in str(exc.value) and "Supervised" in exc.value.hint
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_dpo_resumes_after_a_stop_to_the_same_curve(pref_data, tmp_path):
    data, _ = pref_data
    kw = dict(model=str(demo_model_dir()), data=[str(data)], method="dpo", iters=10, **FAST)
    full = RecordingEvents()
    train(TrainConfig(out=str(tmp_path / "full"), **kw), events=full)
    ref = [v for _, v in full.series("train_loss")]

    tok = CancelToken()

    class StopAt(RecordingEvents):
        def metric(self, name, step, value):
            if name == "train_loss" and step == 7:
                tok.cancel()

    with pytest.raises(Cancelled):
        train(TrainConfig(out=str(tmp_path / "part"), **kw), events=StopAt(), cancel=tok)
    for ck in (tmp_path / "part" / "checkpoints").iterdir():
        if ck.name != "step-000005":
            shutil.rmtree(ck)
    resumed = RecordingEvents()
    res = train(TrainConfig(model=""), resume=tmp_path / "part", events=resumed)
    assert res["state"] == "done"
    got = [v for _, v in resumed.series("train_loss")]
    assert len(got) == 5
    for a, b in zip(ref[5:], got):  # the reference log-probs are the base model's, whatever the adapter
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5), (ref[5:], got)
