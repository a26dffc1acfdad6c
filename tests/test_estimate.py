"""core.estimate: the Train page's memory and duration figures before a run starts (no MLX, no Qt)."""
import json

import pytest

from core import estimate
from core.paths import demo_model_dir
from core.presets import preset_values

OPTIONS = {**preset_values("quick"), "iters": 40}


def test_weights_are_counted_from_the_headers():
    params, stored = estimate._weights_of(demo_model_dir())
    from mlx_lm import load

    model, _ = load(str(demo_model_dir()))
    from mlx.utils import tree_flatten

    assert params == sum(v.size for _, v in tree_flatten(model.parameters()))
    dtype = json.loads((demo_model_dir() / "config.json").read_text()).get("torch_dtype", "float32")
    assert stored == params * {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


def test_a_pair_counts_as_two_sequences_and_steps_follow_the_options(monkeypatch):
    monkeypatch.setattr(estimate, "measured_pace", lambda *a, **k: None)  # no earlier run of this model counts
    sft = estimate.estimate_training(demo_model_dir(), OPTIONS, n_train=200)
    dpo = estimate.estimate_training(demo_model_dir(), {**OPTIONS, "method": "dpo"}, n_train=200)
    assert sft.steps == dpo.steps == 40
    assert dpo.memory_bytes > sft.memory_bytes
    assert dpo.tokens_per_step == pytest.approx(2 * sft.tokens_per_step)
    epochs = estimate.estimate_training(demo_model_dir(), {**OPTIONS, "iters": 0, "epochs": 2, "batch": 4,
                                                           "grad_accum": 1}, n_train=200)
    assert epochs.steps == 2 * 200 // 4
    assert sft.seconds and sft.seconds > 0 and sft.basis == "from a quick speed test of this computer"


def test_a_run_that_does_not_fit_says_what_to_change(monkeypatch):
    import core.train.memory

    fits = estimate.estimate_training(demo_model_dir(), OPTIONS, n_train=200)
    monkeypatch.setattr(core.train.memory, "total_memory_bytes", lambda: int(fits.memory_bytes / 0.9 * 0.8))
    est = estimate.estimate_training(demo_model_dir(), {**OPTIONS, "grad_checkpoint": False}, n_train=200)
    assert not est.fits
    assert est.fix.startswith("Turn on") or "batch size" in est.fix


def test_the_pace_of_the_last_run_on_the_model_is_preferred(tmp_path):
    from core import runs

    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": str(demo_model_dir()), "batch": 2, "grad_accum": 1}))
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, 13):
            f.write(json.dumps({"step": step, "train_loss": 1.0, "elapsed": 0.5 * step}) + "\n")
    assert runs.run_dirs(tmp_path / "runs")
    pace = estimate.measured_pace(demo_model_dir(), tmp_path / "runs")
    assert pace == pytest.approx(0.25)  # 0.5 s a step of 2 examples
