"""Preference tuning (DPO, ORPO) end to end on the demo model: the CLI, metrics, resume and evaluation."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import runs
from core.demo import world as demo_world
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
           "--warmup", 3, "--valid-every", 10, "--test-fraction", 0)  # (the held-out pairs below are the test)
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
    # measured here: base 0.875 (the demo model, pretrained on this world, already prefers most right records),
    # DPO 1.0. The fine-tune must remove at least half of the base's wrong preferences, and there must be some.
    assert base < 1 and tuned >= 0.9 and tuned - base >= 0.5 * (1 - base), (base, tuned)


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


# ---------------------------------------------------------------------------
# The test pairs (issue 28): set aside as chat runs' test split, never read by training
# ---------------------------------------------------------------------------

def _spy_encode(monkeypatch, seen: list):
    from core.tokens import ChatEncoder

    real = ChatEncoder.encode

    def spy(self, messages, *a, **k):
        seen.append(json.dumps(messages, sort_keys=True))
        return real(self, messages, *a, **k)

    monkeypatch.setattr(ChatEncoder, "encode", spy)
    return lambda: monkeypatch.setattr(ChatEncoder, "encode", real)


def _sides(pairs) -> set[str]:
    """Each pair's two sequences as the encoder would be given them."""
    from core.train.preference import _messages

    return {json.dumps(list(p.prompt) + _messages(side), sort_keys=True)
            for p in pairs for side in (p.chosen, p.rejected)}


def test_dpo_sets_test_pairs_aside_that_training_never_encodes_and_eval_uses(pref_data, tmp_path, monkeypatch):
    from core.evaluate import evaluate, run_pair_splits

    data, _ = pref_data
    one_file = tmp_path / "pairs.jsonl"
    one_file.write_text((data / "train.jsonl").read_text() + (data / "valid.jsonl").read_text(), encoding="utf-8")
    n = len(one_file.read_text().splitlines())
    seen: list[str] = []
    restore = _spy_encode(monkeypatch, seen)
    res = train(TrainConfig(model=str(demo_model_dir()), data=[str(one_file)], out=str(tmp_path / "run"),
                            method="dpo", iters=2, test_fraction=0.2, valid_fraction=0.1,
                            **{**FAST, "valid_every": 0}))
    restore()
    splits = run_pair_splits(res["run_dir"])
    test = splits["test"]
    assert len(test) == res["test_examples"] == round(n * 0.2)
    assert res["train_examples"] + res["valid_examples"] + res["test_examples"] == n
    keys = {s: {p.key() for p in splits[s]} for s in splits}
    assert not keys["test"] & keys["train"] and not keys["test"] & keys["validation"]
    assert not _sides(test) & set(seen)  # neither answer of a test pair was ever encoded by training
    assert _sides(splits["train"]) <= set(seen)  # (the spy saw what training encoded)
    result = evaluate(res["run_dir"], max_tokens=2, limit=4)
    assert result.source == "test"
    assert [r.expected for r in result.rows] == [p.chosen[-1]["content"] for p in test[:4]]
    out = result.to_json()
    assert out["tuned"]["split"] == "test" and isinstance(out["tuned"]["preference_accuracy"], float)
    # another seed draws other test pairs; no share, none
    from core.data import load_dataset
    from core.train.preference import split_pairs

    ds = load_dataset([str(one_file)])
    assert {p.key() for p in split_pairs(ds, 0.1, 0, True, 0.2)[2]} == keys["test"]
    assert {p.key() for p in split_pairs(ds, 0.1, 1, True, 0.2)[2]} != keys["test"]
    assert split_pairs(ds, 0.1, 0, True, 0.0)[2] == []


def test_a_preference_test_file_is_never_opened_by_training_and_eval_uses_it(pref_data, tmp_path, monkeypatch):
    import core.data.dataset as data_mod  # load_dataset calls load_file there
    from core.evaluate import evaluate

    data, held = pref_data
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    shutil.copy(held, folder / "test.jsonl")
    opened = []
    real = data_mod.load_file

    def spy(path, *a, **k):
        opened.append(Path(path).name)
        return real(path, *a, **k)

    monkeypatch.setattr(data_mod, "load_file", spy)
    res = train(TrainConfig(model=str(demo_model_dir()), data=[str(folder)], out=str(tmp_path / "run"),
                            method="dpo", iters=2, **{**FAST, "valid_every": 0}))
    assert sorted(opened) == ["train.jsonl", "valid.jsonl"]
    assert res["test_examples"] is None  # a test file, left unread
    opened.clear()
    result = evaluate(res["run_dir"], max_tokens=2)
    assert "test.jsonl" in opened and result.source == "test"
    held_rows = [json.loads(x) for x in held.read_text().splitlines()]
    assert len(result.rows) == len(held_rows)


def test_the_cli_starts_a_dpo_run_from_the_presets_dpo_values(pref_data, tmp_path):
    from core.presets import preset_values

    data, _ = pref_data
    run = tmp_path / "preset"
    p = tl("train", "--model", demo_model_dir(), "--data", data, "--out", run, "--method", "dpo", "--preset",
           "balanced", "--iters", 2, "--max-seq-len", 96, "--valid-every", 0, "--targets", "attention")
    assert p.returncode == 0, p.stderr[-3000:]
    cfg = json.loads((run / "config.json").read_text())
    want = preset_values("balanced", "dpo")
    assert [cfg[k] for k in ("lr", "batch", "beta", "rank")] == [want[k] for k in ("lr", "batch", "beta", "rank")]



def _heldout_questions(path: Path) -> Path:
    """The demo's held-out structured questions (resources/demo/heldout.json), the right record expected."""
    from core.paths import demo_data_dir

    held = json.loads((demo_data_dir().parent / "heldout.json").read_text(encoding="utf-8"))["structured"]
    rows = [{"messages": q["messages"] + [{"role": "assistant", "content": demo_world.structured_answer(
        tuple(q["topic"].split(" ", 1)))}]} for q in held]
    return _write(path, rows)


def _topic_words(rows, side: str) -> float:
    """The share of the asked topic's two words the greedy answers write: the adjective as a JSON string
    (the record's first feature), the noun anywhere. The demo model answers these questions in JSON
    with keys of its own, and DPO on these pairs does not teach it the record's keys (both answers of
    a pair share them), so core.evaluate's exact match and field accuracy stay 0 on both sides; what
    the pairs tell apart is the topic, and that is what the greedy answers get better at."""
    got = 0
    for r in rows:
        e = json.loads(r.expected)
        adjective, noun = e["name"].split(" ", 1)
        got += (json.dumps(adjective) in r.answers[side]) + (noun in r.answers[side])
    return got / (2 * len(rows))


@pytest.mark.slow  # 120 DPO steps and 2 x 40 greedy answers: about two minutes on 2 cores
def test_gentle_dpo_improves_the_greedy_answers_on_the_demos_heldout_questions(pref_data, tmp_path):
    from core.evaluate import evaluate

    data, _ = pref_data
    questions = _heldout_questions(tmp_path / "questions.jsonl")
    res = train(TrainConfig(model=str(demo_model_dir()), data=[str(data)], out=str(tmp_path / "run"), method="dpo",
                            beta=0.1, iters=120, lr=3e-4, rank=8, alpha=16.0, batch=8, max_seq_len=96, warmup=3,
                            valid_every=0, checkpoint_every=0, seed=0))
    result = evaluate(res["run_dir"], data=[str(questions)])
    assert len(result.rows) == 40
    base, tuned = _topic_words(result.rows, "base"), _topic_words(result.rows, "tuned")
    # measured with the bundled demo model (the tool-calling build, session 12): base 0.475; gentle DPO
    # at lr 3e-4 for 120 steps 0.55 and 0.575 (seeds 0 and 1); lr 2e-4: 0.525-0.55 (120 steps), 0.55-0.5625
    # (240); lr 5e-4 for 60 steps 0.4875-0.5125. (The previous demo model: base 0.20, gentle runs 0.31-0.36;
    # the learning test's lr 1e-3 for 30 steps takes the preference but spoils the answers.)
    assert tuned >= base + 0.05, (base, tuned)
