"""Trusting a fine-tune (issue 28): the best checkpoint and early stop, a test split training never
reads, the report card, the forgetting check and the price of each quantization."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core import runs
from core.data import load_dataset, train_valid_test
from core.events import RecordingEvents
from core.paths import demo_data_dir, demo_model_dir
from core.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(rank=4, alpha=8.0, lr=1e-3, batch=8, max_seq_len=128, warmup=2, valid_every=0, valid_batches=-1,
            checkpoint_every=0, seed=3)


def demo_lines(name: str) -> list[str]:
    return (demo_data_dir() / name).read_text(encoding="utf-8").splitlines()


def write_folder(folder: Path, **files: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def keys(records) -> set[str]:
    return {r.key() for r in records}


# ---------------------------------------------------------------------------
# Best checkpoint, early stop, memorising
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """A tiny dataset (8 structured examples) trained for many passes at a high learning rate. Each step
    takes all 8 (batch 8), so the training loss falls smoothly and the validation loss rises clearly
    (measured: best at step 15, 18% above it at step 25); with batches of 4 at lr 3e-3 both curves were
    noisy enough that on another CPU's arithmetic (an AMD EPYC) the warning never came."""
    tmp = tmp_path_factory.mktemp("memorise")
    structured = [x for x in demo_lines("train.jsonl") if "structured format" in x]
    data = write_folder(tmp / "data", train=structured[:8], valid=[x for x in demo_lines("valid.jsonl")
                                                                   if "structured format" in x][:8])
    ev = RecordingEvents()
    cfg = TrainConfig(model=str(demo_model_dir()), data=[str(data)], out=str(tmp / "run"),
                      **{**FAST, "lr": 2e-3, "rank": 8, "alpha": 16.0, "batch": 8, "warmup": 5, "iters": 300,
                         "valid_every": 5, "early_stop": 6, "test_fraction": 0.0})
    res = train(cfg, events=ev)
    return Path(res["run_dir"]), res, ev


def test_many_passes_over_tiny_data_warn_of_memorising_and_stop_early(memorised):
    run, res, ev = memorised
    warnings = [t for lvl, t in ev.logs if lvl == "warning" and "memorise" in t]
    # said once per best: again only after a new best (a bump that then improves is not memorising)
    bests = [re.search(r"The best adapter \(step (\d+)\)", t).group(1) for t in warnings]
    assert warnings and len(set(bests)) == len(bests), ev.logs
    assert res["memorising"] is not None and f"step {res['best_step']}" in warnings[-1]
    assert res["stopped_early"] is not None and res["steps"] == res["stopped_early"] < 300
    steps, valid = runs.series(runs.read_metrics(run), "valid_loss")
    assert steps[-1] == res["stopped_early"]
    # the six validations after the best one did not improve on it
    best_i = valid.index(min(valid))
    assert steps[best_i] == res["best_step"] and len(steps) - 1 - best_i == 6
    # the training loss fell far below the validation loss, which rose again from its best
    m = res["memorising"]
    assert m["valid_loss"] > 1.02 * m["best_valid_loss"] and m["best_step"] < m["step"] <= res["stopped_early"]
    _, train_loss = runs.series(runs.read_metrics(run), "train_loss")
    assert train_loss[-1] < 0.5 * valid[-1]
    # config.json and status.json name the best step; both adapters are in the run folder
    assert runs.read_json(run / "config.json")["best_step"] == res["best_step"]
    status = runs.read_json(run / "status.json")
    assert status["best_step"] == res["best_step"] and status["state"] == "done"
    assert (run / "adapters_best.safetensors").is_file() and (run / "adapters.safetensors").is_file()
    assert runs.RunInfo.load(run).best_step == res["best_step"]


def test_the_best_adapter_has_the_lowest_validation_loss_of_the_curve(memorised):
    run, res, _ev = memorised
    from core.evaluate import evaluate

    _, valid = runs.series(runs.read_metrics(run), "valid_loss")
    best = evaluate(run, split="validation", limit=None, max_tokens=4).to_json()
    final = evaluate(run, split="validation", limit=None, max_tokens=4, adapter="final").to_json()
    assert best["tuned"]["split"] == "validation"
    assert best["tuned"]["loss"] == pytest.approx(min(valid), rel=1e-4)
    assert final["tuned"]["loss"] == pytest.approx(valid[-1], rel=1e-4)
    assert best["tuned"]["loss"] < final["tuned"]["loss"]


def test_the_report_card_names_the_best_step_and_the_memorising(memorised):
    run, res, _ev = memorised
    r = json.loads((run / "report.json").read_text())
    assert r["schema"] == 1 and r["curve"]["best_step"] == res["best_step"]
    assert r["curve"]["stopped_early"] == res["stopped_early"]
    assert r["curve"]["memorising"]["best_step"] == res["best_step"]
    assert r["data"]["examples"] == {"train": 8, "validation": 8, "test": 0}
    assert r["settings"]["early_stop"] == 6 and r["evaluation"] is None
    md = (run / "report.md").read_text()
    assert f"Best step: {res['best_step']}" in md and "Memorising" in md


def test_best_keeper_replays_a_resumed_run():
    """A resume replays the kept metrics: the best so far, the misses in a row and memorising carry on."""
    from core.train import BestKeeper

    keeper = BestKeeper(patience=3)
    keeper.replay([[0, None, 2.0], [1, 1.5, None], [5, 1.0, 1.2], [6, 0.8, None], [10, 0.6, 1.4],
                   [11, 0.5, None], [15, 0.4, 1.5]])
    assert (keeper.best_step, keeper.best_loss, keeper.bad) == (5, 1.2, 2)
    assert keeper.memorising == {"best_step": 5, "step": 15, "best_valid_loss": 1.2, "valid_loss": 1.5}
    saved = []
    keeper.train(0.3)
    assert keeper.valid(20, 1.3, lambda s, v: saved.append(s)) is True  # the third miss in a row: stop
    assert saved == [] and keeper.best_step == 5
    # a single bump is not memorising, and a new best clears it
    k2 = BestKeeper()
    k2.replay([[0, None, 2.0], [1, 1.0, None], [5, None, 1.0], [6, 0.5, None], [10, None, 1.5]])
    assert k2.memorising is None
    k2.train(0.4)
    k2.valid(15, 1.6)
    assert k2.memorising is not None
    k2.train(0.3)
    k2.valid(20, 0.9)
    assert k2.memorising is None and k2.best_step == 20


def test_a_resumed_run_keeps_its_best_adapter(tmp_path):
    from core.events import Cancelled, CancelToken

    tok = CancelToken()

    class StopAt(RecordingEvents):
        def metric(self, name, step, value):
            if name == "train_loss" and step == 12:
                tok.cancel()

    kw = {**FAST, "iters": 20, "valid_every": 5, "checkpoint_every": 10, "test_fraction": 0.0}
    cfg = TrainConfig(model=str(demo_model_dir()), data=[str(demo_data_dir())], out=str(tmp_path / "run"), **kw)
    with pytest.raises(Cancelled):
        train(cfg, events=StopAt(), cancel=tok)
    run = tmp_path / "run"
    before = runs.read_json(run / "status.json")
    assert before["state"] == "cancelled" and before["best_step"] == 10  # the best so far survives the stop
    res = train(TrainConfig(model=""), resume=run)
    steps, valid = runs.series(runs.read_metrics(run), "valid_loss")
    assert steps == [0, 5, 10, 15, 20]
    assert res["best_step"] == steps[valid.index(min(valid))]
    assert runs.read_json(run / "status.json")["best_step"] == runs.read_json(run / "config.json")["best_step"] \
        == res["best_step"]


# ---------------------------------------------------------------------------
# The test split
# ---------------------------------------------------------------------------

def test_the_test_split_is_disjoint_from_train_and_validation():
    ds = load_dataset([demo_data_dir()])
    train_recs, valid_recs, test_recs = train_valid_test(ds, 0.1, 0.1, seed=3)
    assert keys(valid_recs) == keys(ds.splits["valid"])  # the validation file stays the validation split
    assert len(keys(test_recs)) == round(0.1 * len(keys(ds.splits["train"])))
    assert not keys(test_recs) & keys(train_recs) and not keys(test_recs) & keys(valid_recs)
    assert len(train_recs) + len(test_recs) == len(ds.splits["train"])
    # the same seed draws the same split; another seed another one
    assert keys(train_valid_test(ds, 0.1, 0.1, seed=3)[2]) == keys(test_recs)
    assert keys(train_valid_test(ds, 0.1, 0.1, seed=4)[2]) != keys(test_recs)
    # no share, no test split
    assert train_valid_test(ds, 0.1, 0.0, seed=3)[2] == []


def test_a_test_file_is_never_opened_by_training_and_evaluate_uses_it(tmp_path, monkeypatch):
    import core.data.dataset as data_mod  # load_dataset calls load_file there
    from core.evaluate import evaluate

    lines = demo_lines("train.jsonl")
    folder = write_folder(tmp_path / "data", train=lines[:60], valid=lines[60:70], test=lines[70:76])
    opened = []
    real = data_mod.load_file

    def spy(path, *a, **k):
        opened.append(Path(path).name)
        return real(path, *a, **k)

    monkeypatch.setattr(data_mod, "load_file", spy)
    res = train(TrainConfig(model=str(demo_model_dir()), data=[str(folder)], out=str(tmp_path / "run"),
                            **{**FAST, "iters": 2}))
    assert sorted(opened) == ["train.jsonl", "valid.jsonl"]
    assert res["test_examples"] is None  # a test file, left unread
    opened.clear()
    result = evaluate(res["run_dir"], max_tokens=4)
    assert "test.jsonl" in opened
    assert result.source == "test" and len(result.rows) == 6
    out = result.to_json()
    assert out["base"]["split"] == out["tuned"]["split"] == "test"
    assert [r.expected for r in result.rows] == [json.loads(x)["messages"][-1]["content"] for x in lines[70:76]]


def test_the_test_share_is_never_encoded_by_training(tmp_path, monkeypatch):
    from core.evaluate import evaluate, run_splits
    from core.tokens import ChatEncoder

    one_file = tmp_path / "all.jsonl"
    one_file.write_text("\n".join(demo_lines("train.jsonl")[:80]) + "\n", encoding="utf-8")
    seen = []
    real = ChatEncoder.encode

    def spy(self, messages, *a, **k):
        seen.append(json.dumps(messages, sort_keys=True))
        return real(self, messages, *a, **k)

    monkeypatch.setattr(ChatEncoder, "encode", spy)
    res = train(TrainConfig(model=str(demo_model_dir()), data=[str(one_file)], out=str(tmp_path / "run"),
                            **{**FAST, "iters": 2, "test_fraction": 0.2, "valid_fraction": 0.1}))
    encoded = set(seen)
    monkeypatch.setattr(ChatEncoder, "encode", real)
    splits = run_splits(res["run_dir"])
    assert len(splits["test"]) == res["test_examples"] == 16
    assert not {json.dumps(r.messages, sort_keys=True) for r in splits["test"]} & encoded
    assert not keys(splits["test"]) & keys(splits["train"]) and not keys(splits["test"]) & keys(splits["validation"])
    assert res["train_examples"] + res["valid_examples"] + res["test_examples"] == 80
    assert evaluate(res["run_dir"], max_tokens=2, limit=3).source == "test"


def test_runs_from_before_the_test_split_keep_their_validation_split(tmp_path):
    from core.evaluate import run_splits

    res = train(TrainConfig(model=str(demo_model_dir()), data=[str(demo_data_dir())], out=str(tmp_path / "run"),
                            **{**FAST, "iters": 1}))
    run = Path(res["run_dir"])
    cfg = runs.read_json(run / "config.json")
    del cfg["test_fraction"]  # as an older Tuneloom wrote it
    (run / "config.json").write_text(json.dumps(cfg))
    splits = run_splits(run)
    assert splits["test"] == [] and len(splits["train"]) == 320


# ---------------------------------------------------------------------------
# The forgetting check
# ---------------------------------------------------------------------------

# the demo's own fine-tune (core.demo.DEMO_TRAIN), half as long to keep the test short
GENTLE = dict(iters=100, rank=8, alpha=16.0, lr=1e-3, batch=8, targets="all", max_seq_len=256, warmup=10,
              valid_every=0, checkpoint_every=0, test_fraction=0.0)
WRECKING_LR = 1e-2


def demo_run(tmp_path, seed: int, lr: float, iters: int = 100) -> Path:
    cfg = TrainConfig(model=str(demo_model_dir()), data=[str(demo_data_dir())], out=str(tmp_path / f"run-{seed}-{lr}"),
                      **{**GENTLE, "lr": lr, "seed": seed, "iters": iters})
    return Path(train(cfg)["run_dir"])


def prose_rate(run: Path, adapter: str = "best") -> float:
    from core.demo import world
    from core.demo import heldout_prompts
    from core.generate import ChatModel

    model = ChatModel(demo_model_dir(), adapter_dir=run, adapter=adapter)
    prose = [model.encoder.prompt_ids(p["messages"]) for p in heldout_prompts()["prose"]]
    return sum(world.is_prose(answer) for answer in model.greedy_batch(prose, [64] * len(prose))) / len(prose)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_forgetting_check_tells_a_gentle_run_from_a_wrecked_one(tmp_path, seed):
    """Four short trainings of the demo model (about a minute each on 2 busy cores): the calibration."""
    from core.drift import FORGOT_KL, KEPT_KL, drift_check
    from core.paths import demo_dir

    gentle, wrecked = demo_run(tmp_path, seed, GENTLE["lr"]), demo_run(tmp_path, seed, WRECKING_LR, iters=60)
    # Both runs' final adapters are checked. A wrecking run's last validation loss may end above the base
    # model's, and then its best adapter is the base itself (step 0): measured here at lr 7e-3 and 2e-2
    # (prose kept 1.0, no drift), and session 11 saw prose kept at lr 1e-2 on another machine, where here
    # it fell to 0.0. Which way it goes depends on the CPU's arithmetic; the final weights are wrecked.
    # the wrecking learning rate does wreck the demo model's prose; the gentle run keeps it
    assert prose_rate(gentle, "final") >= 0.9 and prose_rate(wrecked, "final") <= 0.5
    demo_probes = [demo_dir() / "probes.jsonl"]
    g, w = (drift_check(r, probes=demo_probes, bundled=False, adapter="final") for r in (gentle, wrecked))
    assert g["verdict"] == "kept" and g["kl_per_token"] < KEPT_KL
    assert w["verdict"] == "forgot" and w["kl_per_token"] >= FORGOT_KL
    assert w["changed_share"] > g["changed_share"] and w["loglik_change"] < g["loglik_change"] <= 0.05
    # the most-moved probes come with both answers, most moved first
    assert len(w["probes"]) == 5 and all({"prompt", "base", "tuned"} <= set(p) for p in w["probes"])
    kls = [p["kl_per_token"] for p in w["probes"]]
    assert kls == sorted(kls, reverse=True)
    assert runs.read_json(wrecked / "drift.json")["verdict"] == "forgot"


def test_base_answers_are_cached_once_per_base_model(tmp_path, monkeypatch):
    from core import drift
    from core.generate import ChatModel
    from core.tokens import ChatEncoder

    monkeypatch.setenv("TUNELOOM_HOME", str(tmp_path / "home"))
    model = ChatModel(demo_model_dir(), encoder=ChatEncoder(demo_model_dir()))
    probes = drift.load_probes()
    assert 60 <= len(probes) <= 100
    assert {p.category for p in probes} == {"knowledge", "arithmetic", "instructions", "writing", "code", "languages"}
    prompts = [model.encoder.prompt_ids([{"role": "user", "content": p.prompt}]) for p in probes[:4]]
    first = drift.base_answers(model, prompts)
    calls = []
    monkeypatch.setattr(ChatModel, "generate_ids", lambda self, *a, **k: calls.append(a) or [])
    monkeypatch.setattr(ChatModel, "greedy_ids_batch", lambda self, *a, **k: calls.append(a) or [])
    assert drift.base_answers(model, prompts) == first and calls == []
    assert len(list((tmp_path / "home" / "cache" / "probes").glob("*.json"))) == 1


def test_users_add_their_own_probes_and_bad_files_are_explained(tmp_path):
    from core.drift import load_probes
    from core.events import TuneloomError

    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"prompt": "What is our refund policy?"}\n\n{"prompt": "Who are you?", "id": "me"}\n')
    probes = load_probes([mine])
    assert [p.prompt for p in probes[-2:]] == ["What is our refund policy?", "Who are you?"]
    assert probes[-1].id == "me" and probes[-2].source == "mine.jsonl"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"question": "no prompt"}\n')
    with pytest.raises(TuneloomError, match=r"bad.jsonl, line 2: no \"prompt\""):
        load_probes([bad])


def test_changed_in_substance_ignores_case_and_punctuation():
    from core.drift import changed_in_substance

    assert not changed_in_substance("Paris is the capital.", "paris is the capital")
    assert not changed_in_substance("The capital of France is Paris, a big city", "The capital of France is Paris.")
    assert changed_in_substance("The capital of France is Paris.", '{"name": "France", "category": "place"}')


# ---------------------------------------------------------------------------
# The CLI contract and the price of each quantization
# ---------------------------------------------------------------------------

def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_eval_names_the_split_and_checks_drift():
    from tests.fixtures.eval_run import tiny_run

    run = tiny_run()
    proc = cli("eval", str(run), "--json", "--drift", "--limit", "4", "--max-tokens", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    for side in ("base", "tuned"):
        assert {"exact_match", "json_valid", "json_field_accuracy", "loss", "perplexity", "examples"} <= set(out[side])
        assert out[side]["split"] == "test"
    d = out["drift"]
    assert {"kl_per_token", "loglik_change", "changed_share", "verdict", "probes"} <= set(d)
    assert d["verdict"] in ("kept", "some drift", "forgot")
    assert all({"prompt", "base", "tuned"} <= set(p) for p in d["probes"])
    report = json.loads((run / "report.json").read_text())
    assert report["evaluation"]["split"] == "test" and report["forgetting"]["verdict"] == d["verdict"]
    proc = cli("eval", str(run), "--json", "--split", "validation", "--final", "--limit", "2", "--max-tokens", "2")
    assert proc.returncode == 0 and json.loads(proc.stdout)["tuned"]["split"] == "validation"


def test_cli_export_measure_prices_each_quantization_in_order():
    from core.export import llamacpp
    from tests.fixtures.eval_run import tiny_run

    if not llamacpp.available():
        pytest.skip("llama-cpp-python is not installed")
    run = tiny_run()
    proc = cli("export", str(run), "--measure", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads(proc.stdout)
    assert list(table) == ["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"]
    for row in table.values():
        assert set(row) == {"top1_agreement", "kl_per_token", "bytes"}
        assert 0 <= row["top1_agreement"] <= 1 and row["kl_per_token"] >= 0
    agree = [table[q]["top1_agreement"] for q in ("f16", "q8_0", "q6_k", "q4_k_m")]
    assert agree == sorted(agree, reverse=True) and agree[0] >= 0.99
    assert table["f16"]["kl_per_token"] <= table["q8_0"]["kl_per_token"] <= table["q4_k_m"]["kl_per_token"]
    assert table["f16"]["bytes"] > table["q8_0"]["bytes"] > table["q4_k_m"]["bytes"]
    recorded = runs.read_json(run / "exports" / "quant_price.json")
    assert recorded["quants"] == table and recorded["split"] == "test"
    assert json.loads((run / "report.json").read_text())["quantization"]["quants"] == table
    assert "same next token" in (run / "report.md").read_text()


# ---------------------------------------------------------------------------
# The GUI's part (the window's own tests are in tests/test_gui_trust.py: Qt runs in the GUI test process)
# ---------------------------------------------------------------------------

def test_the_history_reads_the_report_card(memorised):
    from app.gui import jobs

    run, res, _ev = memorised
    info = jobs.load_run(run)
    assert info.report_md.startswith("# Report card") and f"Best step: {res['best_step']}" in info.report_md


def test_a_dropped_test_file_is_the_test_split_beside_other_data(tmp_path):
    from core.data import load_dataset, test_files

    lines = demo_lines("train.jsonl")
    write_folder(tmp_path, data=lines[:10], test=lines[10:13])
    ds = load_dataset([tmp_path / "data.jsonl", tmp_path / "test.jsonl"])
    assert len(ds.records) == 10 and len(ds.splits["test"]) == 3
    assert test_files([tmp_path / "data.jsonl", tmp_path / "test.jsonl"]) == [str(tmp_path / "test.jsonl")]
    # a file named test.jsonl alone is the user's data, not a test split
    alone = load_dataset([tmp_path / "test.jsonl"])
    assert len(alone.records) == 3 and not alone.splits.get("test")
    assert test_files([tmp_path / "test.jsonl"]) == []


def test_an_export_of_the_best_adapter_is_recorded_on_the_report_card(tmp_path):
    from core.export.pipeline import export, write_export_record
    from tests.fixtures.eval_run import tiny_run

    run = tiny_run()
    res = export(run, gguf=tmp_path / "m.gguf", quant="q8_0")
    assert res["adapter_file"] == "adapters_best.safetensors"  # the best adapter by default
    assert export(run, gguf=tmp_path / "f.gguf", quant="q8_0", final=True)["adapter_file"] == "adapters.safetensors"
    write_export_record(run, res)
    report = json.loads((run / "report.json").read_text())
    mine = [e for e in report["exports"] if e["gguf"] == str(tmp_path / "m.gguf")]
    assert mine and mine[0]["quant"] == "q8_0" and mine[0]["adapter_file"] == "adapters_best.safetensors"
    measured = runs.read_json(run / "exports" / "quant_price.json")
    if measured:  # measured earlier in this session: the export record carries its price
        assert mine[0]["price"] == measured["quants"]["q8_0"]
