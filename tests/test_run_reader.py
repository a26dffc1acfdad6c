"""core.runs.RunFolder: the one reader of a run folder (issue 24), and adapter_choices (Try and Export)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core import runs
from core.runs import AdapterChoice, RunFolder, RunInfo, adapter_choices


def _write(p: Path, text: str | bytes) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def _complete_run(d: Path, best: bool = True) -> Path:
    cfg = {"model": "/models/base", "data": ["train.jsonl"], "iters": 30, "system_prompt": "Be brief.",
           "max_seq_len": 512, "tools": True}
    if best:
        cfg["best_step"] = 20
    _write(d / "config.json", json.dumps(cfg))
    status = {"state": "done", "step": 30, "total": 30, "valid_loss": 1.5}
    if best:
        status["best_step"] = 20
    _write(d / "status.json", json.dumps(status))
    _write(d / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in (
        {"step": 10, "train_loss": 3.0}, {"step": 20, "train_loss": 2.0, "valid_loss": 1.8},
        {"step": 30, "train_loss": 1.0, "valid_loss": 1.5})))
    _write(d / "adapter_config.json", json.dumps({"base_model": "/models/other-base", "fine_tune_type": "lora"}))
    _write(d / "adapters.safetensors", b"final")
    if best:
        _write(d / "adapters_best.safetensors", b"best")
    _write(d / "run.json", json.dumps({"title": "My run"}))
    for step in (10, 30):
        _write(d / "checkpoints" / f"step-{step:06d}" / "state.json", "{}")
    (d / "checkpoints" / "step-000040").mkdir()  # no state.json: an interrupted write, not a checkpoint
    _write(d / "report.json", json.dumps({"schema": 1, "run": d.name}))
    _write(d / "report.md", "# Report\n")
    _write(d / "evaluation.json", json.dumps({"split": "test", "examples": 4}))
    return d


def test_a_complete_run_folder_reads_every_part(tmp_path):
    run = RunFolder(_complete_run(tmp_path / "r"))
    assert run.is_run
    assert run.config["iters"] == 30 and run.config["model"] == "/models/base"
    assert run.status == {"state": "done", "step": 30, "total": 30, "valid_loss": 1.5, "best_step": 20}
    assert [m["step"] for m in run.metrics] == [10, 20, 30]
    assert run.adapter_config["fine_tune_type"] == "lora"
    assert run.meta == {"title": "My run"}
    # the adapter config's base model wins over the training config's (as the exporters read it)
    assert run.base_model == "/models/other-base"
    assert run.system_prompt() == "Be brief."
    assert run.best_step == 20 and run.last_step == 30
    assert run.final_adapter == run.path / "adapters.safetensors"
    assert run.best_adapter == run.path / "adapters_best.safetensors"
    assert run.has_adapter
    assert run.adapter("best").read_bytes() == b"best" and run.adapter("final").read_bytes() == b"final"
    assert [c.name for c in run.checkpoints] == ["step-000010", "step-000030"]
    assert run.latest_checkpoint == run.path / "checkpoints" / "step-000030"
    assert run.report == {"schema": 1, "run": "r"} and run.report_text() == "# Report\n"
    assert run.evaluation == {"split": "test", "examples": 4} and run.forgetting is None
    assert run.exports == []


def test_parts_are_read_once_and_cached(tmp_path):
    run = RunFolder(_complete_run(tmp_path / "r"))
    assert run.config["iters"] == 30
    (run.path / "config.json").write_text(json.dumps({"iters": 99}), encoding="utf-8")
    assert run.config["iters"] == 30  # the same reader keeps what it read
    assert RunFolder(run.path).config["iters"] == 99  # a new reader reads the file again


@pytest.mark.parametrize("damage", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b""])
def test_a_damaged_config_or_status_reads_as_empty(tmp_path, damage):
    d = _complete_run(tmp_path / "r")
    (d / "config.json").write_bytes(damage)
    (d / "status.json").write_bytes(damage)
    (d / "adapter_config.json").write_bytes(damage)
    run = RunFolder(d)
    assert run.config == {} and run.status == {} and run.adapter_config == {}
    assert run.is_run  # the file is there: a run folder, a damaged one
    assert run.base_model == "" and run.best_step is None and run.system_prompt() is None
    assert run.has_adapter  # both files are there: loading them says what is wrong
    # the other parts read as usual
    assert [m["step"] for m in run.metrics] == [10, 20, 30]
    assert run.best_adapter is not None and run.last_step == 30  # from the metrics now
    # RunInfo (the history's view) still says what is damaged, and the state
    info = RunInfo.load(d)
    assert info.state == "damaged" and "config.json" in info.problem and "status.json" in info.problem


def test_a_damaged_metrics_line_is_skipped_and_the_others_kept(tmp_path):
    d = _complete_run(tmp_path / "r")
    with open(d / "metrics.jsonl", "ab") as fh:
        fh.write(b'{"step": 40, "train_loss": 0.5}\n{"step": 50, "train_lo\n\xff\xfe\n[1]\n{"step": "x"}\n')
    run = RunFolder(d)
    assert [m["step"] for m in run.metrics] == [10, 20, 30, 40]
    assert run.last_step == 30  # the status says 30: it wins over the metrics


def test_a_missing_folder_reads_as_nothing(tmp_path):
    run = RunFolder(tmp_path / "nowhere")
    assert not run.is_run and run.config == {} and run.status == {} and run.metrics == []
    assert run.final_adapter is None and run.best_adapter is None and not run.has_adapter
    assert run.checkpoints == [] and run.latest_checkpoint is None and run.exports == []
    assert run.report == {} and run.report_text() is None and run.evaluation is None
    assert run.last_step is None


def test_a_run_without_a_best_adapter(tmp_path):
    run = RunFolder(_complete_run(tmp_path / "r", best=False))
    assert run.best_step is None and run.best_adapter is None
    assert run.adapter("best") == run.path / "adapters.safetensors"  # "best" falls back on the final one
    best, final = run.adapter_choices()
    assert best == AdapterChoice("best", "Best adapter (none kept: the final one)", 30, run.path / "adapters.safetensors")
    assert final == AdapterChoice("final", "Final adapter (the last step, step 30)", 30,
                                  run.path / "adapters.safetensors")


def test_adapter_choices_label_the_best_and_final_steps(tmp_path):
    d = _complete_run(tmp_path / "r")
    best, final = adapter_choices(d)
    assert (best.which, best.step, best.path) == ("best", 20, d / "adapters_best.safetensors")
    assert best.label == "Best adapter (lowest validation loss, step 20)"
    assert (final.which, final.step, final.path) == ("final", 30, d / "adapters.safetensors")
    assert final.label == "Final adapter (the last step, step 30)"
    # a stopped run: its final adapter is the latest it saved, not the last step's
    (d / "status.json").write_text(json.dumps({"state": "cancelled", "step": 25, "best_step": 20}), encoding="utf-8")
    best, final = adapter_choices(d)
    assert best.step == 20 and final.step is None and final.label == "Final adapter (the latest saved)"


def test_adapter_choices_without_a_run_or_an_adapter(tmp_path):
    assert [(c.which, c.label, c.step, c.path) for c in adapter_choices(None)] == [
        ("best", "Best adapter (lowest validation loss)", None, None),
        ("final", "Final adapter (the last step)", None, None)]
    d = tmp_path / "new"
    _write(d / "config.json", json.dumps({"model": "m"}))
    assert [(c.which, c.step, c.path) for c in adapter_choices(d)] == [("best", None, None), ("final", None, None)]


def test_exports_are_listed_with_their_records(tmp_path):
    d = _complete_run(tmp_path / "r")
    ex = d / "exports"
    _write(ex / "model-q8_0.gguf", b"GGUF" + b"\0" * 96)
    _write(ex / "model-q8_0.Modelfile", "FROM ./model-q8_0.gguf\n")
    _write(ex / "model-q8_0.json", json.dumps({"gguf": str(ex / "model-q8_0.gguf"), "quant": "q8_0",
                                               "ollama": "tuned"}))
    _write(ex / "model-f16.gguf", b"GGUF")  # no record
    _write(ex / "broken.json", "{oops")  # a damaged record: nothing is lost but it
    elsewhere = _write(tmp_path / "far" / "away.gguf", b"GGUF" + b"\0" * 10)
    _write(ex / "away.json", json.dumps({"gguf": str(elsewhere), "quant": "f16"}))
    _write(ex / "quant_price.json", json.dumps({"quants": {"q8_0": {"top1_agreement": 0.99}}}))
    run = RunFolder(d)
    got = [(e.path.name, e.kind, e.size, e.record.get("quant")) for e in run.exports]
    assert got == [("model-f16.gguf", "gguf", 4, None), ("model-q8_0.Modelfile", "modelfile", 23, None),
                   ("model-q8_0.gguf", "gguf", 100, "q8_0"), ("away.gguf", "gguf", 14, "f16")]
    assert run.exports[2].record["ollama"] == "tuned" and run.exports[3].path == elsewhere
    assert run.export_record("quant_price.json")["quants"]["q8_0"]["top1_agreement"] == 0.99
    assert run.export_record("broken.json") == {} and run.export_record("missing.json") == {}
    # every record by file name, the damaged one left out (the Hub push takes the newest GGUF from them)
    assert [r.get("quant") for r in run.export_records()] == ["f16", "q8_0", None]
    from core.export.hub_push import _newest_gguf

    os.utime(elsewhere, (2e9, 2e9))
    assert _newest_gguf(d) == elsewhere
    os.utime(ex / "model-q8_0.gguf", (2.1e9, 2.1e9))
    assert _newest_gguf(d) == ex / "model-q8_0.gguf"
    # RunInfo lists the same files (it builds on the reader)
    info = RunInfo.load(d)
    assert [e.path for e in info.exports] == [e.path for e in run.exports]
    assert info.folder.exports_dir == ex and info.adapters == d / "adapters.safetensors"
    assert info.best_adapters == d / "adapters_best.safetensors" and info.best_step == 20


def test_the_callers_read_through_the_reader(tmp_path):
    """The readers built on RunFolder give the same answers as before: the run's base model and system
    prompt (core.run_inputs), its tool flag (core.export.pipeline), the measured price (core.export.quant_price)."""
    from core.events import TuneloomError
    from core.export.pipeline import run_tools
    from core.export.quant_price import read_price
    from core.run_inputs import run_base_model

    d = _complete_run(tmp_path / "r")
    assert run_tools(d) is True and run_tools(None) is False and run_tools(tmp_path / "nowhere") is False
    assert read_price(d) == {}
    _write(d / "exports" / "quant_price.json", json.dumps({"quants": {"q4_k_m": {"bytes": 5}}}))
    assert read_price(d) == {"quants": {"q4_k_m": {"bytes": 5}}}
    with pytest.raises(TuneloomError, match="not a run folder"):
        run_base_model(tmp_path / "nowhere")
    with pytest.raises(TuneloomError, match="is not there any more"):
        run_base_model(d)  # /models/other-base does not exist
    base = tmp_path / "base"
    _write(base / "config.json", "{}")
    (d / "adapter_config.json").write_text(json.dumps({"base_model": str(base)}), encoding="utf-8")
    assert run_base_model(d) == base


def test_the_history_list_is_unchanged_by_the_reader(tmp_path):
    root = tmp_path / "runs"
    good = _complete_run(root / "20250101-000000-good")
    bad = _complete_run(root / "20250101-000001-bad")
    (bad / "status.json").write_text("{", encoding="utf-8")
    infos = {i.name: i for i in runs.list_runs(root)}
    assert infos[good.name].state == "done" and infos[good.name].title == "My run"
    assert infos[bad.name].state == "damaged" and "status.json is not valid JSON" in infos[bad.name].problem


def test_two_runs_or_crash_reports_in_the_same_second_get_two_names(tmp_path, monkeypatch):
    """Run folders and crash reports are named by the second they start; a name already taken (by a
    folder or by a file) is never reused or replaced: the next one gets -2, -3, ..."""
    import datetime as dt
    import time
    from types import SimpleNamespace

    from app import logs

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261206-120000")
    first, second = runs.new_run_dir("my run", root=tmp_path), runs.new_run_dir("my run", root=tmp_path)
    (tmp_path / "20261206-120000-my-run-3").write_text("a file of the user's")
    third = runs.new_run_dir("my run", root=tmp_path)
    assert [p.name for p in (first, second, third)] == ["20261206-120000-my-run", "20261206-120000-my-run-2",
                                                        "20261206-120000-my-run-4"]
    assert all(p.is_dir() for p in (first, second, third))
    assert (tmp_path / "20261206-120000-my-run-3").read_text() == "a file of the user's"

    monkeypatch.setenv("TUNELOOM_LOG_DIR", str(tmp_path / "logs"))
    fixed = dt.datetime(2026, 12, 6, 12, 0, 0)
    monkeypatch.setattr(logs, "_dt", SimpleNamespace(datetime=SimpleNamespace(now=lambda: fixed)))
    reports = []
    for what in ("first", "second"):
        try:
            raise ValueError(f"the {what} failure")
        except ValueError:
            reports.append(logs.write_crash_report(what="a test"))
    assert [p.name for p in reports] == ["crash-20261206-120000.txt", "crash-20261206-120000-2.txt"]
    assert "the first failure" in reports[0].read_text() and "the second failure" in reports[1].read_text()
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(p.name for p in reports)  # no leftovers
    # a report that cannot be written (a full disk) leaves no empty file under the name it took
    import errno
    from pathlib import Path

    real_write = Path.write_text

    def full(self, *a, **k):
        if self.name.endswith(".part"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        logs.write_crash_report(what="a test")
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(p.name for p in reports)
