"""The headless demo end to end: the numbers the foundation issue promises."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.export import llamacpp
from core.demo import (BASE_JSON_MAX, F16_AGREE_MIN, PROSE_SURVIVAL_MIN, Q8_AGREE_MIN, TUNED_EXACT_MIN,
                       TUNED_JSON_MIN, TUNED_NAME_MIN)

ROOT = Path(__file__).resolve().parent.parent


def _json_or_none(text):
    try:
        return json.loads(text)
    except ValueError:
        return None


@pytest.fixture(scope="module")
def demo_run(installed_demo):
    """`tuneloom demo` as a user runs it: the command of the wheel installed into a fresh venv outside
    the checkout (tests/fixtures/installed.py), run once for the suite (tests/conftest.py)."""
    return installed_demo.result(timeout=900), installed_demo.out


def test_demo_exits_zero_and_meets_its_numbers(demo_run):
    proc, out = demo_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["ok"] is True
    # the promises of issue 15, on 40+ held-out topics (the thresholds are the issue's own numbers)
    assert (BASE_JSON_MAX, TUNED_JSON_MIN, TUNED_NAME_MIN, TUNED_EXACT_MIN, PROSE_SURVIVAL_MIN, F16_AGREE_MIN,
            Q8_AGREE_MIN) == (0.10, 0.95, 0.90, 0.70, 0.90, 0.95, 0.90)
    base = next(st for st in s["stages"] if st["stage"] == "evaluate base")
    assert base["topics"] >= 40
    assert s["base_json_valid_rate"] <= BASE_JSON_MAX
    assert s["base_json_exact_rate"] <= BASE_JSON_MAX
    assert s["tuned_json_valid_rate"] >= TUNED_JSON_MIN
    assert s["tuned_json_name_correct_rate"] >= TUNED_NAME_MIN
    assert s["tuned_json_exact_rate"] >= TUNED_EXACT_MIN
    assert s["prose_survival"] >= PROSE_SURVIVAL_MIN
    if llamacpp.available():
        assert s["f16_agreement"] >= F16_AGREE_MIN
        assert s["q8_0_agreement"] >= Q8_AGREE_MIN
        # the price of each quantization: agreement with the MLX model falls with the size
        agree = [s["quantization"][q]["top1_agreement"] for q in ("f16", "q8_0", "q6_k", "q4_k_m")]
        assert agree == sorted(agree, reverse=True), s["quantization"]
        assert "same next token" in proc.stdout
    # the demo's gentle fine-tune kept what the base model knew, and says so
    assert s["forgetting_verdict"] == "kept" and "forgetting check" in proc.stdout
    report = json.loads((out / "run" / "report.json").read_text())
    assert report["forgetting"]["verdict"] == "kept" and report["curve"]["best_step"] is not None
    # the answers are checked against the world's facts, and saved for people to read
    answers = json.loads((out / "answers.json").read_text())
    structured = [a for a in answers if "expected" in a]
    assert len(structured) == base["topics"]
    right = sum(_json_or_none(a["fine_tuned"]) == a["expected"] for a in structured)
    assert right / len(structured) == s["tuned_json_exact_rate"]
    # the summary printed for people names every number
    for key in ("base_json_valid_rate", "tuned_json_valid_rate", "prose_survival", "f16_agreement", "q8_0_agreement",
                "tuned_json_name_correct_rate", "tuned_json_exact_rate", "base_json_exact_rate"):
        assert key in proc.stdout
    assert "exactly right" in proc.stdout and "names the thing" in proc.stdout


def test_demo_writes_every_artifact(demo_run):
    proc, out = demo_run
    s = json.loads((out / "summary.json").read_text())
    names = [st["stage"] for st in s["stages"]]
    assert names == ["load model", "check data", "evaluate base", "train", "evaluate fine-tuned", "forgetting check",
                     "fuse", "export gguf", "llama.cpp agreement", "quantization price", "ollama"]
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
    # not a terminal: a start and an end line per stage and the summary, no line per token or tensor
    lines = proc.stdout.splitlines() + proc.stderr.splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    assert "\r" not in proc.stderr


def test_quantized_exports_of_the_trained_demo_model_track_mlx(demo_run, tmp_path):
    """Next-token top-1 agreement, llama.cpp vs MLX, on all 80 held-out chats (prompt + MLX's answer).

    Two figures: at the answer positions (the predictions a chat actually uses: the last prompt
    token and every answer token) and at all positions. Inside the user's prompt this tiny model
    (hidden 128) often has near-ties between topic words (top-2 margins of 0.004-0.06 measured),
    which any rounding flips; those predictions are never used at inference. Measured here:
    F16 99.96% / 99.9%, Q8_0 99.55% / 96.9%, Q4_K_M 98.0% / 97.6%. (At hidden 128 no row is a whole
    256-value super-block, so Q6_K falls back to Q8_0 for every tensor, as llama.cpp does.)
    """
    import numpy as np

    pytest.importorskip("llama_cpp")
    import mlx.core as mx

    from core.generate import ChatModel
    from core.export.gguf import export_gguf
    from core.export.llamacpp import LlamaCppModel
    from core.paths import demo_dir

    proc, out = demo_run
    fused = out / "fused"
    mlx = ChatModel(fused)
    prompts = json.loads((demo_dir() / "heldout.json").read_text())
    seqs = []
    for p in prompts["structured"] + prompts["prose"]:
        ids = mlx.encoder.prompt_ids(p["messages"])
        seqs.append((len(ids), ids + mlx.generate_ids(ids, max_tokens=40)))
    ref = [np.array(mlx.model(mx.array(ids)[None])[0].astype(mx.float32)) for _, ids in seqs]
    files = {"f16": out / "demo-f16.gguf", "q8_0": out / "demo-q8_0.gguf"}
    for q in ("q4_k_m", "q6_k"):
        files[q] = tmp_path / f"demo-{q}.gguf"
        export_gguf(fused, files[q], quant=q)
    answer, every = {}, {}
    for q, path in files.items():
        llm = LlamaCppModel(path)
        a_same = a_tot = same = tot = 0
        for (n, ids), r in zip(seqs, ref):
            hit = llm.logits(ids).argmax(-1) == r.argmax(-1)
            same, tot = same + int(hit.sum()), tot + len(ids)
            a_same, a_tot = a_same + int(hit[n - 1:].sum()), a_tot + len(ids) - n + 1
        llm.close()
        answer[q], every[q] = a_same / a_tot, same / tot
    print("top-1 agreement with MLX at answer positions:", answer, "at all positions:", every)
    assert answer["f16"] >= 0.995 and every["f16"] >= 0.99
    assert answer["q8_0"] >= 0.98 and every["q8_0"] >= 0.95
    assert answer["q6_k"] >= 0.98 and answer["q4_k_m"] >= 0.95, answer


def test_export_cli_on_the_demo_run(demo_run, tmp_path):
    proc, out = demo_run
    gguf = tmp_path / "m.gguf"
    p = subprocess.run([sys.executable, "-m", "app.cli", "export", str(out / "run"), "--gguf", str(gguf),
                        "--quant", "q8_0"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert Path(res["gguf"]) == gguf and gguf.stat().st_size > 100_000
    assert (tmp_path / "m.Modelfile").exists() and "ollama create" in res["ollama_command"]  # one per GGUF
    from core.export.gguf import gguf_metadata_summary

    meta = gguf_metadata_summary(gguf)
    assert meta["arch"] == "qwen2" and meta["tokenizer_pre"] == "qwen2"
