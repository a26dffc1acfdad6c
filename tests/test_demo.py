"""The headless demo end to end: the numbers the foundation issue promises."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import llamacpp
from core.demo import BASE_JSON_MAX, F16_AGREE_MIN, TUNED_JSON_MIN

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "app.cli", "demo", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    return proc, out


def test_demo_exits_zero_and_meets_its_numbers(demo_run):
    proc, out = demo_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["ok"] is True
    assert s["base_json_valid_rate"] <= BASE_JSON_MAX
    assert s["tuned_json_valid_rate"] >= TUNED_JSON_MIN
    assert 0.0 <= s["prose_survival"] <= 1.0
    if llamacpp.available():
        assert s["f16_agreement"] >= F16_AGREE_MIN
        assert s["q8_0_agreement"] is not None
    # the summary printed for people names every number
    for key in ("base_json_valid_rate", "tuned_json_valid_rate", "prose_survival", "f16_agreement", "q8_0_agreement"):
        assert key in proc.stdout


def test_demo_writes_every_artifact(demo_run):
    proc, out = demo_run
    s = json.loads((out / "summary.json").read_text())
    names = [st["stage"] for st in s["stages"]]
    assert names == ["load model", "check data", "evaluate base", "train", "evaluate fine-tuned", "fuse",
                     "export gguf", "llama.cpp agreement", "ollama"]
    for p in s["gguf"].values():
        assert Path(p).stat().st_size > 100_000
    mf = Path(s["modelfile"]).read_text()
    assert "\nFROM ./demo-f16.gguf\n" in mf and "TEMPLATE" in mf and 'PARAMETER stop "<|im_end|>"' in mf
    ollama = next(st for st in s["stages"] if st["stage"] == "ollama")
    # no server in tests: the command that would register it is printed instead
    assert ollama["registered"] is False and "ollama create" in ollama["message"]
    assert "ollama create" in proc.stdout
    # a progress line per stage on stderr
    for n in names:
        assert f"==> {n}" in proc.stderr
