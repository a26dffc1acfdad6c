"""The LoRA as a GGUF adapter (llama.cpp's layout) on a shared base GGUF, checked with llama.cpp itself.

llama.cpp (llama-cpp-python, ``lora_path``: llama_adapter_lora_init + llama_set_adapter_lora, what
Ollama's runner does with ``ADAPTER``) runs the base GGUF with the adapter GGUF; its logits must equal
those of the merged GGUF of the same type. Registration sends both files to the recording Ollama
look-alike with ``adapters`` in /api/create.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

import gguf  # noqa: E402

from core.events import RecordingEvents  # noqa: E402
from core.export.pipeline import export  # noqa: E402
from core.export.adapter import AdapterNotExact, export_adapter, read_adapter  # noqa: E402
from tests.fixtures.ollama_server import FakeOllama  # noqa: E402
from tests.fixtures.ship_runs import make_run, tuned_logits  # noqa: E402
from tests.fixtures.tiny_models import cached_tiny_model  # noqa: E402

PROMPTS = ["Hello world, how are you today? I am fine, thank you.",
           "<|im_start|>user\nWrite code:\n    x = 1<|im_end|>\n<|im_start|>assistant\n"]
# the same bases are exported again and again: each tokenizer is read once (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("shared_vocab")


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    """A fresh Tuneloom data folder per test: where the shared base GGUFs go."""
    monkeypatch.setenv("TUNELOOM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _base(tmp_path_factory, name: str, dtype: str = "float32") -> Path:
    return cached_tiny_model(name, tmp_path_factory.getbasetemp() / "tiny-models", dtype=dtype)


def _llama(path: Path, lora: Path | None = None):
    kw = {"lora_path": str(lora)} if lora else {}
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2, seed=0, **kw)


def _logits(llm, prompts=PROMPTS) -> np.ndarray:
    out = []
    for p in prompts:
        ids = llm.tokenize(p.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        out.append(np.array(llm.scores[: len(ids)]))
    return np.concatenate(out)


@pytest.mark.parametrize("model, quant, atol", [
    # f32: merged and adapter paths compute the same sums in another order, but llama.cpp keeps the KV cache
    # in f16, so keys and values that differ in their last float32 bits can round apart (measured: 0.0026)
    ("qwen2.5", "f32", 0.01),
    # f16: the merged file rounds W + s*BA to f16, the adapter path rounds W and adds s*BA in f32; on top,
    # llama.cpp rounds activations to f16 before f16 matmuls (tests/test_gguf_export.py: 0.01-0.017 on
    # these models), so the same 0.05 as the GGUF export's logit check
    ("qwen2.5", "f16", 0.05),
    # Llama: the Q/K rows are reordered for llama.cpp's RoPE, and so must lora_b's be
    ("tinyllama", "f16", 0.05),
])
def test_base_plus_adapter_gives_the_merged_logits(tmp_path, tmp_path_factory, model, quant, atol):
    base = _base(tmp_path_factory, model)
    run = make_run(base, tmp_path / "run")
    merged = export(run, gguf=tmp_path / "merged.gguf", quant=quant)["gguf"]
    ev = RecordingEvents()
    res = export_adapter(run, gguf=tmp_path / "out" / "adapter.gguf", quant=quant, events=ev)

    adapter, base_gguf = Path(res["adapter_gguf"]), Path(res["base_gguf"])
    assert adapter.stat().st_size < 0.5 * base_gguf.stat().st_size, "the adapter is the small part"
    assert res["base_reused"] is False and base_gguf.parent == Path(os.environ["TUNELOOM_HOME"]) / "base-gguf"

    # the layout llama.cpp's convert_lora_to_gguf.py writes
    r = gguf.GGUFReader(str(adapter))
    field = lambda k: r.fields[k].contents()  # noqa: E731
    assert field("general.type") == "adapter" and field("adapter.type") == "lora"
    assert field("general.architecture") == ("llama" if model == "tinyllama" else "qwen2")
    assert field("adapter.lora.alpha") == pytest.approx(2.0 * 4)  # mlx-lm scale 2.0, rank 4
    names = {t.name: t for t in r.tensors}
    assert "blk.1.attn_q.weight.lora_a" in names and "blk.0.ffn_down.weight.lora_b" in names
    a, b = names["blk.0.attn_q.weight.lora_a"], names["blk.0.attn_q.weight.lora_b"]
    assert list(a.shape) == [64, 4] and list(b.shape) == [4, 64]  # GGUF order: ne0 = columns (A: in, B: r)
    assert list(names["blk.0.ffn_down.weight.lora_a"].shape) == [128, 4]  # down_proj's input is 128 wide

    want = _logits(_llama(Path(merged)))
    without = _logits(_llama(base_gguf))
    got = _logits(_llama(base_gguf, adapter))
    assert np.abs(want - without).max() > 1.0, "the adapter must change the model for this test to mean anything"
    err = np.abs(got - want).max()
    assert err < atol, f"base + adapter vs merged: max |d logit| = {err}"
    # and both are the fine-tune Tuneloom trained (mlx-lm, float32, on llama.cpp's tokens)
    llm = _llama(base_gguf)
    ids = [llm.tokenize(p.encode(), add_bos=False, special=True) for p in PROMPTS]
    assert np.abs(got - tuned_logits(base, run, ids)).max() < max(atol, 0.05)

    # the Modelfile: FROM the shared base, ADAPTER the adapter beside it
    text = Path(res["modelfile"]).read_text()
    assert Path(res["modelfile"]).name == "adapter.Modelfile"
    assert f"FROM {base_gguf.resolve()}\nADAPTER ./adapter.gguf\n" in text and "TEMPLATE" in text


def test_base_gguf_is_written_once_and_reused(tmp_path, tmp_path_factory):
    base = _base(tmp_path_factory, "qwen2.5")
    run1 = make_run(base, tmp_path / "run1", seed=1)
    run2 = make_run(base, tmp_path / "run2", seed=2)
    first = export_adapter(run1, gguf=tmp_path / "a1.gguf", quant="q8_0")
    stamp = os.stat(first["base_gguf"]).st_mtime_ns
    second = export_adapter(run2, gguf=tmp_path / "a2.gguf", quant="q8_0")
    assert second["base_reused"] is True and second["base_gguf"] == first["base_gguf"]
    assert os.stat(second["base_gguf"]).st_mtime_ns == stamp, "not written again"
    assert Path(first["base_gguf"]).name == f"{base.name}-q8_0.gguf"
    other = export_adapter(run2, gguf=tmp_path / "a3.gguf", quant="f16")
    assert other["base_reused"] is False and other["base_gguf"] != first["base_gguf"], "one base per type"
    assert Path(tmp_path / "a1.gguf").read_bytes() != Path(tmp_path / "a2.gguf").read_bytes()


def test_registration_sends_the_adapter_in_api_create(tmp_path, tmp_path_factory):
    base = _base(tmp_path_factory, "qwen2.5")
    run = make_run(base, tmp_path / "run")
    with FakeOllama() as server:
        res = export_adapter(run, gguf=tmp_path / "adapter.gguf", quant="f16", ollama="tuned-adapter",
                             ollama_host=server.url)
        assert server.problems == []
        (create,) = server.calls("POST", "/api/create")
        body = create.json
        import hashlib

        sha = lambda p: "sha256:" + hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
        assert list(body["files"].values()) == [sha(res["base_gguf"])]
        assert body["adapters"] == {"adapter.gguf": sha(res["adapter_gguf"])}
        uploaded = {u.path.rsplit("/", 1)[-1] for u in server.blob_uploads()}
        assert uploaded == {sha(res["base_gguf"]), sha(res["adapter_gguf"])}
        assert server.models["tuned-adapter:latest"].adapters == body["adapters"]
        assert res["ollama"]["adapters"] == body["adapters"]


def test_dora_and_qlora_are_refused_with_the_merged_export_offered(tmp_path, tmp_path_factory):
    base = _base(tmp_path_factory, "qwen2.5")
    dora = make_run(base, tmp_path / "dora", kind="dora")
    with pytest.raises(AdapterNotExact) as err:
        export_adapter(dora, gguf=tmp_path / "d.gguf")
    assert "DoRA" in str(err.value) and "merged" in err.value.hint.lower()
    assert not (tmp_path / "d.gguf").exists()

    # a QLoRA base: the same folder marked as MLX-quantized in its config.json
    import shutil

    qbase = tmp_path / "qbase"
    shutil.copytree(base, qbase)
    cfg = json.loads((qbase / "config.json").read_text())
    cfg["quantization"] = {"group_size": 64, "bits": 4}
    (qbase / "config.json").write_text(json.dumps(cfg))
    run = tmp_path / "qrun"
    shutil.copytree(make_run(base, tmp_path / "tmp-run"), run)
    acfg = json.loads((run / "adapter_config.json").read_text())
    acfg["base_model"] = str(qbase)
    (run / "adapter_config.json").write_text(json.dumps(acfg))
    with pytest.raises(AdapterNotExact) as err:
        read_adapter(qbase, run)
    assert "QLoRA" in str(err.value) and "merged" in err.value.hint.lower()


def test_cli_adapter_only_prints_paths_and_json(tmp_path, tmp_path_factory, capsys):
    from app.cli import main

    base = _base(tmp_path_factory, "qwen2.5")
    run = make_run(base, tmp_path / "run")
    out = tmp_path / "x" / "tuned.gguf"
    assert main(["export", str(run), "--adapter-only", "--gguf", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["adapter_gguf"] == str(out) and Path(got["base_gguf"]).is_file() and Path(got["modelfile"]).is_file()
    assert got["base_reused"] is False and "ollama create" in got["ollama_command"]
    # an adapter it wrote before is replaced only when asked (issue 25), its Modelfile with it
    assert main(["export", str(run), "--adapter-only", "--gguf", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(run), "--adapter-only", "--gguf", str(out), "--force"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert f"adapter_gguf: {out}" in lines and any(x.startswith("base_gguf: ") for x in lines)
    rec = json.loads((run / "exports" / "tuned.json").read_text())
    assert rec["kind"] == "adapter" and rec["base_gguf"] == got["base_gguf"]
    assert main(["export", str(run), "--adapter-only"]) == 2, "--adapter-only needs --gguf"
