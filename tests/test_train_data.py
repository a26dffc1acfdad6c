"""The dataset options reach training: templates and the system prompt are saved in the run's
config.json and used when the run (or its resume) reads its data; ``thinking`` is recorded,
on only for data that carries reasoning on a template that can think (Qwen3)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from core import runs
from core.paths import demo_model_dir
from core.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(rank=4, alpha=8.0, lr=1e-3, batch=2, max_seq_len=64, warmup=1, valid_every=0, valid_batches=1,
            checkpoint_every=100, seed=0, iters=2)


def test_cli_train_with_templates_saves_them_in_the_config(tmp_path):
    f = tmp_path / "pokemon.csv"
    f.write_text("name,types\n" + "".join(f"Mon{i},Type{i % 3}\n" for i in range(12)))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "app.cli", "train", "--model", demo_model_dir(), "--data", f,
                        "--out", out, "--iters", "2", "--batch", "2", "--max-seq-len", "64",
                        "--user-template", "Pokemon name: {name}", "--assistant-template", "{types}",
                        "--system", "You are a Pokedex."], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    cfg = runs.read_json(out / "config.json")
    assert cfg["user_template"] == "Pokemon name: {name}" and cfg["assistant_template"] == "{types}"
    assert cfg["system_prompt"] == "You are a Pokedex." and cfg["thinking"] is False
    assert TrainConfig.from_dict(cfg).user_template == "Pokemon name: {name}"


def test_thinking_follows_the_data(tmp_path):
    from fixtures.tiny_models import cached_tiny_model

    model = cached_tiny_model("qwen3", tmp_path / "models")
    think = tmp_path / "think.jsonl"
    think.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"q{i}"},
        {"role": "assistant", "content": f"<think>\nstep {i}\n</think>\n\na{i}"}]}) + "\n" for i in range(6)))
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(6)))
    on = train(TrainConfig(model=str(model), data=[str(think)], out=str(tmp_path / "on"), **FAST))
    off = train(TrainConfig(model=str(model), data=[str(plain)], out=str(tmp_path / "off"), thinking=True, **FAST))
    assert runs.read_json(Path(on["run_dir"]) / "config.json")["thinking"] is True
    assert runs.read_json(Path(off["run_dir"]) / "config.json")["thinking"] is False
    # the demo model's template has no thinking mode: off, whatever the data
    demo = train(TrainConfig(model=str(demo_model_dir()), data=[str(think)], out=str(tmp_path / "demo"), **FAST))
    assert runs.read_json(Path(demo["run_dir"]) / "config.json")["thinking"] is False
