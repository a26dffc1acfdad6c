"""Issue 27: the figures the window shows are true and come from one place each.

- the loss summary compares like with like (validation first; else the bias-corrected smoothed training loss over
  the same window at both ends): a run whose raw loss alternates between ~0 and 3-7 gets figures that fall;
- presets scale to the data (enough steps, a warm-up of at most a tenth of the run), and a run too short to learn
  or whose loss did not fall is named as such;
- the GGUF size estimate is within 5% of the file written, for every type, on the demo run;
- memory in one unit; the Qwen3.5 catalog cards judged with the settings that fit.
"""

import pytest

from core import catalog, runs
from core.train import MAX_WARMUP_SHARE, MIN_STEPS, fit_to_data, planned_steps, preset_config
from core.units import fmt_memory


def bimodal_metrics(n=200, valid=None):
    """Raw loss as length-grouped batches give it: examples the model knows (~0.002) and new ones (3-7, falling)."""
    out = []
    for i in range(n):
        hi = 7.0 - 4.0 * i / n
        out.append({"step": i + 1, "train_loss": 0.002 if i % 2 == 0 else hi})
    for step, v in valid or []:
        out.append({"step": step, "valid_loss": v})
    return out


def test_a_bimodal_raw_loss_gets_a_summary_that_falls():
    m = bimodal_metrics()
    # the old banner took the first raw value (0.002) and the end of a smoothed line started there: it "rose"
    assert m[0]["train_loss"] < 0.01
    s = runs.loss_summary(m)
    assert s.kind == "training" and s.window == 40
    assert s.fell and s.first > 2.0 and s.last < s.first
    assert "training loss" in s.words() and "smoothed over 40 steps" in s.words()
    # the same window at both ends: shifting the whole run shifts both ends alike
    s2 = runs.loss_summary([{**x, "train_loss": x["train_loss"] + 1.0} for x in m])
    assert s2.first == pytest.approx(s.first + 1.0) and s2.last == pytest.approx(s.last + 1.0)


def test_the_validation_loss_comes_first_when_it_was_measured():
    m = bimodal_metrics(valid=[(0, 5.95), (100, 3.1), (200, 2.68)])
    s = runs.loss_summary(m)
    assert (s.kind, s.first, s.last, s.first_step, s.last_step) == ("validation", 5.95, 2.68, 0, 200)
    assert s.words() == "validation loss 5.950 → 2.680"
    # a single validation figure cannot say whether it fell: the training loss speaks
    assert runs.loss_summary(bimodal_metrics(valid=[(200, 2.68)])).kind == "training"
    assert runs.loss_summary([]) is None


def test_smoothing_is_bias_corrected():
    ys = runs.smoothed([4.0, 4.0, 4.0], 0.9)
    assert ys == pytest.approx([4.0, 4.0, 4.0])  # no start-up pull towards 0 or the first value


def test_presets_scale_to_a_small_file():
    quick = preset_config("quick")
    assert planned_steps(quick, 27) == 6  # 27 training examples, batch 4: 6 steps a pass (issue 27, item 2)
    vals, notes = fit_to_data(quick, 27)
    assert vals["iters"] == MIN_STEPS and planned_steps(vals, 27) == MIN_STEPS
    assert vals["warmup"] <= MAX_WARMUP_SHARE * MIN_STEPS
    assert len(notes) == 2 and f"{MIN_STEPS} steps instead of 6" in notes[0] and "warm-up" in notes[1]
    # a large file is left as the preset says
    big, notes = fit_to_data(quick, 4000)
    assert big == quick and notes == []
    # a step count the user gave is kept; its warm-up still fits in a tenth of it
    mine, notes = fit_to_data({**quick, "iters": 8}, 27)
    assert mine["iters"] == 8 and mine["warmup"] == 0 and len(notes) == 1


def test_a_run_too_short_or_not_learning_is_named():
    short = runs.loss_summary(bimodal_metrics(6))
    assert runs.learning_problems(short, 6, 10, MIN_STEPS)[0].startswith("only 6 steps")
    assert any("warm-up" in p for p in runs.learning_problems(short, 6, 10, MIN_STEPS))
    rising = runs.loss_summary([{"step": 0, "valid_loss": 8.63}, {"step": 6, "valid_loss": 9.23}])
    probs = runs.learning_problems(rising, 60, 3, MIN_STEPS)
    assert probs == ["the validation loss did not fall (8.630 → 9.230)"]
    good = runs.loss_summary(bimodal_metrics(valid=[(0, 5.95), (200, 2.68)]))
    assert runs.learning_problems(good, 200, 10, MIN_STEPS) == []


def test_memory_has_one_unit_and_one_formatter():
    from core.units import fmt_bytes, fmt_memory

    assert fmt_memory(23.5 * 2**30) == "23.5 GB"  # what the Model page, the Train page and the log all say now
    assert fmt_memory(16 * 2**30) == "16.0 GB"  # a 16 GB Mac
    assert fmt_bytes(1_834_970) == "1.8 MB"  # files: as Finder counts them
    from app.gui.pages.train import fmt_memory as train_fmt

    assert train_fmt(25.3e9) == fmt_memory(25.3e9) == "23.6 GB"
    assert fmt_memory(25.3e9) == "23.6 GB"


def test_qwen35_cards_are_judged_with_the_settings_that_fit():
    entries = catalog.load_catalog()
    e = catalog.get_entry("qwen3.5-0.8b", entries)
    ck = e.raw["train_memory_checkpointed_bytes"]
    assert e.train_memory_bytes > 100 * 2**30 > ck  # without "Save memory" the recurrent state needs > 100 GB
    ok, why = catalog.fits(e, 32 * 2**30)
    assert ok and why.startswith("fits:") and "Save memory" in why and fmt_memory(ck) in why
    assert fmt_memory(e.train_memory_bytes) not in why  # never "needs about 119 GB"
    ok, why = catalog.fits(e, 8 * 2**30)
    assert not ok and "even with" in why and fmt_memory(ck) in why
    # a dense model is judged as before
    q = catalog.get_entry("qwen2.5-0.5b-instruct", entries)
    assert catalog.fits(q, 64 * 2**30)[1].startswith("fits: needs about")


@pytest.fixture(scope="module")
def demo_run():
    from tests.fixtures.eval_run import tiny_run

    return tiny_run()


def test_export_sizes_are_within_5_percent_of_the_files_written(demo_run, tmp_path):
    """Every GGUF type on the demo run: the estimate the Export page shows (from the base's safetensors headers and
    tokenizer) against the file the export writes (the fused run)."""
    from core.export.pipeline import estimate_export_bytes, export, resolve_source
    from core.export.gguf import QUANT_TYPES

    base, _ = resolve_source(demo_run)
    for quant in QUANT_TYPES:
        est = estimate_export_bytes(base, quant, fuse=True)
        out = tmp_path / f"demo-{quant}.gguf"
        export(demo_run, gguf=out, quant=quant)
        real = out.stat().st_size
        assert abs(est["gguf"] - real) <= 0.05 * real, (quant, est["gguf"], real)
        assert est["fused"] > 0
