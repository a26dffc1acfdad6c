"""Evaluation: metrics checkable by hand, losses equal to training's, progress, stop, CSV/JSONL."""
import csv
import json
import math

import pytest

from core import runs
from core.events import Cancelled, CancelToken, RecordingEvents, TuneloomError
from core.paths import demo_data_dir, demo_model_dir
from tests.fixtures.eval_run import tiny_run


@pytest.fixture(scope="module")
def run_dir():
    return tiny_run()


@pytest.fixture(scope="module")
def model(run_dir):
    from core.generate import ChatModel

    return ChatModel(demo_model_dir(), adapter_dir=run_dir)


@pytest.fixture(scope="module")
def full(run_dir, model):
    """The whole evaluation of the run on its validation examples (the default is its test split)."""
    from core.evaluate import evaluate

    ev = RecordingEvents()
    return evaluate(run_dir, model=model, events=ev, split="validation"), ev


def test_score_answer_by_hand():
    from core.evaluate import json_equal, score_answer

    s = score_answer('{"a": 1, "b": "x", "c": true}', ' {"a": 1.0, "b": "x", "c": 1} ')
    assert (s.exact, s.json_valid, s.fields, s.fields_equal) == (False, True, 3, 2)
    assert s.field_accuracy == pytest.approx(2 / 3)
    s = score_answer('{"a": 1}', '{"a": 1}\n')
    assert (s.exact, s.json_valid, s.field_accuracy) == (True, True, 1.0)
    s = score_answer('{"a": 1}', "Sure! {\"a\": 1}")
    assert (s.exact, s.json_valid, s.field_accuracy) == (False, False, 0.0)
    s = score_answer("A fox.", '{"a": 1}')
    assert (s.exact, s.json_valid, s.fields, s.field_accuracy) == (False, None, None, None)
    s = score_answer("[1, 2]", "[1, 2]")
    assert (s.exact, s.json_valid, s.fields) == (True, True, None)  # an array has no fields
    assert json_equal({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not json_equal(True, 1) and not json_equal("1", 1) and not json_equal([1], [1, 1])


def fake_answers(monkeypatch, answers: dict):
    """Make ChatModel.generate_ids answer each question with the given text (by side)."""
    from core.generate import ChatModel

    def generate_ids(self, prompt_ids, max_tokens=96, cancel=None, *, adapter=None, sampling=None):
        text = self.encoder.decode(prompt_ids)
        side = "tuned" if adapter else "base"
        for q, by_side in answers.items():
            if f"user\n{q}" in text:
                return self.encoder.tokenize(by_side[side])[0]
        raise AssertionError(f"unexpected prompt {text!r}")

    def greedy_batch(self, prompts, max_tokens, *, adapter=None):
        return [self.encoder.decode(generate_ids(self, p, n, adapter=adapter)) for p, n in zip(prompts, max_tokens)]

    monkeypatch.setattr(ChatModel, "generate_ids", generate_ids)
    monkeypatch.setattr(ChatModel, "greedy_batch", greedy_batch)


HAND = [
    ("q1", '{"name": "red fox", "category": "animal", "legs": 4}'),
    ("q2", '{"name": "old kettle", "category": "tool", "hot": true}'),
    ("q3", "The light oak is a plant."),
    ("q4", "It is red."),
]
ANSWERS = {
    "q1": {"base": "not json", "tuned": '  {"name": "red fox", "category": "animal", "legs": 4}\n'},
    "q2": {"base": '{"name": "old kettle", "category": "food", "hot": 1}',
           "tuned": '{"category": "tool", "name": "old kettle", "hot": true}'},
    "q3": {"base": "The light oak is a plant.", "tuned": "The light oak is a plant."},
    "q4": {"base": "no", "tuned": '{"a": 1}'},
}


def write_examples(path, pairs):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in pairs))
    return path


def test_metrics_on_known_answers(run_dir, model, tmp_path, monkeypatch):
    from core.evaluate import evaluate
    from core.train import TrainConfig, encode_records, evaluate_loss
    from core.data import load_dataset

    data = write_examples(tmp_path / "hand.jsonl", HAND)
    fake_answers(monkeypatch, ANSWERS)
    rows = []
    res = evaluate(run_dir, [data], model=model, on_row=rows.append)
    out = res.to_json()
    assert set(out) == {"base", "tuned"}
    for side in out.values():
        assert set(side) == {"exact_match", "json_valid", "json_field_accuracy", "loss", "perplexity", "examples",
                             "preference_accuracy", "split", "tool_call_accuracy"}
        assert side["split"] == "files"
        assert side["tool_call_accuracy"] is None  # no calls in these examples
    b, t = out["base"], out["tuned"]
    # base: exact q3 only; JSON valid q2 of (q1, q2); fields: q1 0 of 3, q2 1 of 3 (name; "food", 1 != true)
    assert (b["exact_match"], b["json_valid"], b["examples"]) == (0.25, 0.5, 4)
    assert b["json_field_accuracy"] == pytest.approx(1 / 6)
    # tuned: exact q1 (whitespace) and q3; both JSON answers valid, every field right (q2 reordered)
    assert (t["exact_match"], t["json_valid"], t["json_field_accuracy"], t["examples"]) == (0.5, 1.0, 1.0, 4)
    assert [r.index for r in rows] == [0, 1, 2, 3] and rows[1].answers["base"] == ANSWERS["q2"]["base"]
    # the losses are the real models' on these examples, computed as training computes them
    cfg = TrainConfig.from_dict(runs.read_json(run_dir / "config.json"))
    seqs = encode_records(model.encoder, load_dataset([data]).records, cfg)
    for side, adapter in (("base", False), ("tuned", True)):
        want = model.run_with(adapter, lambda m: evaluate_loss(m, seqs, cfg.batch, 0, cfg.max_seq_len, -1))
        assert out[side]["loss"] == pytest.approx(want, rel=1e-5)
        assert out[side]["perplexity"] == pytest.approx(math.exp(want), rel=1e-5)
    assert t["loss"] != b["loss"]


def test_prose_only_answers_have_no_json_metrics(run_dir, model, tmp_path, monkeypatch):
    from core.evaluate import evaluate

    data = write_examples(tmp_path / "prose.jsonl", HAND[2:])
    fake_answers(monkeypatch, ANSWERS)
    out = evaluate(run_dir, [data], model=model).to_json()
    for side in ("base", "tuned"):
        assert out[side]["json_valid"] is None and out[side]["json_field_accuracy"] is None
    assert out["base"]["exact_match"] == 0.5 and out["tuned"]["exact_match"] == 0.5


def test_run_validation_losses_equal_the_training_ones(run_dir, full):
    res, ev = full
    from core.data import load_dataset

    valid = load_dataset([demo_data_dir() / "valid.jsonl"]).records
    assert res.source == "validation" and len(res.rows) == len(valid) == 40
    assert [r.expected for r in res.rows] == [v.messages[-1]["content"] for v in valid]
    metrics = [m for m in runs.read_metrics(run_dir) if "valid_loss" in m]
    first, last = metrics[0], metrics[-1]
    assert first["step"] == 0 and last["step"] == 30
    out = res.to_json()
    # before training the adapter is zero: the training's step-0 loss is the base model's
    assert out["base"]["loss"] == pytest.approx(first["valid_loss"], rel=1e-4)
    assert out["tuned"]["loss"] == pytest.approx(last["valid_loss"], rel=1e-4)
    assert out["tuned"]["loss"] < out["base"]["loss"]
    # the demo's validation set holds JSON answers and prose: JSON metrics over the JSON ones
    assert out["base"]["json_valid"] is not None and out["tuned"]["json_field_accuracy"] is not None
    assert res.summary()["json_examples"] == sum(1 for r in res.rows if r.expected.startswith("{"))
    # progress: counts up to its total, ends there
    counted = [(d, t) for d, t, what in ev.progresses if t and ("example" in what or "loss" in what)]
    assert counted[-1][0] == counted[-1][1] == 2 * 40 + 2 * 2  # answers, and loss batches of 32 examples
    assert [d for d, _ in counted] == list(range(1, len(counted) + 1))
    tasks = [p for p in ev.reports if p.unit == "task"]  # the same count, typed
    assert [(p.done, p.total) for p in tasks] == counted


def test_answers_are_greedy_and_the_same_each_time(run_dir, model, full, monkeypatch):
    from core.evaluate import ANSWER_BATCH, answer_budget, evaluate

    res, _ = full
    again = evaluate(run_dir, model=model, limit=3, split="validation")
    assert [r.answers for r in again.rows] == [r.answers for r in res.rows[:3]]
    assert again.to_json()["base"]["examples"] == 3
    # answered in batches: exactly the answers one at a time gives
    for r in res.rows[:ANSWER_BATCH]:
        ids = model.encoder.prompt_ids(r.messages)
        for side in ("base", "tuned"):
            one = model.generate_ids(ids, answer_budget(model.encoder, r.expected), adapter=(side == "tuned"))
            assert model.encoder.decode(one) == r.answers[side], (r.index, side)
    # where mlx-lm cannot batch, one at a time
    import importlib

    tried = []

    def cannot(*a, **k):
        tried.append(1)
        raise NotImplementedError("no batching for this cache")

    monkeypatch.setattr(importlib.import_module("mlx_lm.generate"), "batch_generate", cannot)
    monkeypatch.setattr(model, "_no_batch", False)
    prompts = [model.encoder.prompt_ids(r.messages) for r in res.rows[:2]]
    budgets = [answer_budget(model.encoder, r.expected) for r in res.rows[:2]]
    assert model.greedy_batch(prompts, budgets, adapter=True) == [r.answers["tuned"] for r in res.rows[:2]]
    assert tried == [1] and model._no_batch  # tried once, then one at a time from then on


def test_stop_keeps_the_rows_done(run_dir, model):
    from core.evaluate import evaluate

    cancel = CancelToken()
    with pytest.raises(Cancelled) as info:
        evaluate(run_dir, model=model, cancel=cancel, on_row=lambda row: cancel.cancel())
    res = info.value.result
    from core.evaluate import ANSWER_BATCH

    # the stop lands after the batch under way: its rows are complete and kept, no others
    assert len(res.rows) == ANSWER_BATCH < 40 and not res.complete
    assert all(r.answers.keys() == {"base", "tuned"} for r in res.rows)


def test_csv_and_jsonl_export(full, tmp_path):
    res, _ = full
    c = res.write_csv(tmp_path / "eval.csv")
    with open(c, encoding="utf-8-sig", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(res.rows)
    assert table[0]["expected"] == res.rows[0].expected and table[0]["tuned_answer"] == res.rows[0].answers["tuned"]
    assert {"prompt", "base_answer", "base_exact", "tuned_field_accuracy"} <= set(table[0])
    j = res.write_jsonl(tmp_path / "eval.jsonl")
    lines = [json.loads(x) for x in j.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == len(res.rows) and lines[0]["messages"] == res.rows[0].messages
    assert sum(x["tuned_exact"] for x in lines) / len(lines) == res.to_json()["tuned"]["exact_match"]


def test_bad_inputs(tmp_path, run_dir, model):
    from core.evaluate import evaluate

    with pytest.raises(TuneloomError, match="not a run folder"):
        evaluate(tmp_path)
    with pytest.raises(TuneloomError):
        evaluate(run_dir, model=model, limit=0)
    empty = tmp_path / "plain.jsonl"
    empty.write_text('{"text": "just text"}\n')
    with pytest.raises(TuneloomError, match="question"):
        evaluate(run_dir, [empty], model=model)


def test_changed_dataset_is_reported(tmp_path, monkeypatch):
    import os
    import shutil

    from core.evaluate import run_split
    from core.paths import demo_data_dir

    data = tmp_path / "data"
    shutil.copytree(demo_data_dir(), data)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": str(demo_model_dir()), "data": [str(data)]}))
    ev = RecordingEvents()
    train_recs, valid = run_split(run, events=ev)
    assert len(valid) == 40 and not [t for lv, t in ev.logs if lv == "warning"]
    later = (run / "config.json").stat().st_mtime + 60
    os.utime(data / "valid.jsonl", (later, later))
    run_split(run, events=ev)
    assert any("valid.jsonl changed after this run was trained" in t for lv, t in ev.logs if lv == "warning")
    shutil.rmtree(data)
    with pytest.raises(TuneloomError, match="not there any more"):
        run_split(run)
