"""Fusing adapters into their base: the fused folder computes what base + adapter computed.

Adapters are made the way our trainer makes them (mlx-lm LoRA/DoRA layers, saved as
adapters.safetensors + adapter_config.json), with non-zero ``lora_b`` so the adapter
actually changes the model.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import mlx.core as mx  # noqa: E402
import mlx_lm  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402
from mlx_lm.tuner.dora import DoRALinear  # noqa: E402
from mlx_lm.tuner.lora import LoRALinear  # noqa: E402
from mlx_lm.tuner.utils import linear_to_lora_layers  # noqa: E402

from core.events import Cancelled, CancelToken, RecordingEvents, TuneloomError  # noqa: E402
from core.export.fuse import TOKENIZER_FILES, fuse_model  # noqa: E402
from fixtures.tiny_models import cached_tiny_model  # noqa: E402

LORA = {"rank": 4, "scale": 2.0, "dropout": 0.0}
PROMPTS = [
    "Hello world, how are you today? I am fine, thank you.",
    "<|im_start|>user\nWrite code:\n    x = 1<|im_end|>\n<|im_start|>assistant\n",
]


def tiny_dir(tmp_path_factory, name: str, **kw) -> Path:
    # one cache folder per session, shared with test_gguf_export.py
    return cached_tiny_model(name, tmp_path_factory.getbasetemp() / "tiny-models", **kw)


def make_adapter(model, adapter_dir: Path, kind: str = "lora", num_layers: int = 2, seed: int = 0):
    """Turn ``model`` into a LoRA/DoRA model with random non-zero adapters and save them."""
    mx.random.seed(seed)
    model.freeze()
    linear_to_lora_layers(model, num_layers, LORA, use_dora=(kind == "dora"))
    for _, m in model.named_modules():
        if isinstance(m, (LoRALinear, DoRALinear)):
            m.lora_b = 0.05 * mx.random.normal(m.lora_b.shape)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(adapter_dir / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    (adapter_dir / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": kind, "num_layers": num_layers, "lora_parameters": LORA}))
    return model


def logits(model, tok) -> np.ndarray:
    return np.concatenate([np.array(model(mx.array([tok.encode(p)]))[0].astype(mx.float32)) for p in PROMPTS])


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_fused_model_computes_what_the_adapter_did(tmp_path, tmp_path_factory, kind):
    # float32 base, so the merged weights are not rounded and the comparison can be tight
    base = tiny_dir(tmp_path_factory, "qwen2.5", dtype="float32")
    model, tok = mlx_lm.load(str(base))
    plain = logits(model, tok)
    model = make_adapter(model, tmp_path / "adapter", kind)
    adapted = logits(model, tok)
    assert np.abs(adapted - plain).max() > 1.0, "the adapter must change the model for this test to mean anything"

    ev = RecordingEvents()
    out = fuse_model(base, tmp_path / "adapter", tmp_path / "fused", events=ev)
    assert out == tmp_path / "fused"
    fused_model, fused_tok = mlx_lm.load(str(out))
    fused = logits(fused_model, fused_tok)
    # x @ (W + s*B^T A^T)^T vs x @ W^T + s*(x A) B in float32: only summation order differs
    err = np.abs(fused - adapted).max()
    assert err < 1e-3 * np.abs(adapted).max(), err

    params = dict(tree_flatten(fused_model.parameters()))
    assert not [k for k in params if "lora" in k or k.endswith(".m")]
    assert {v.dtype for v in params.values()} == {mx.float32}
    assert json.loads((out / "config.json").read_text()) == json.loads((base / "config.json").read_text())
    for name in TOKENIZER_FILES:
        if (base / name).exists():
            assert (out / name).read_bytes() == (base / name).read_bytes(), name
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "fused"]  # no temp folder left
    assert ev.progresses[-1][0] == ev.progresses[-1][1]
    assert {r.unit for r in ev.reports} == {"layer"}  # typed: counted in adapted layers (+1: saving)
    import stat

    from core import atomic

    # a plain folder's permissions (mkdtemp makes 0700), files readable as any new file
    assert stat.S_IMODE(out.stat().st_mode) == atomic.new_mode(directory=True)
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o444 == 0o444 & atomic.new_mode(), f


def test_quantized_base_fuses_to_full_precision_and_exports(tmp_path, tmp_path_factory):
    llama_cpp = pytest.importorskip("llama_cpp")
    from mlx_lm import convert

    from core.export.gguf import export_gguf, gguf_metadata_summary

    src = tiny_dir(tmp_path_factory, "qwen2.5")  # bfloat16, like the published model
    qbase = tmp_path / "qwen-4bit"
    convert(str(src), str(qbase), quantize=True, q_group_size=32, q_bits=4)  # as mlx-community models are made
    assert json.loads((qbase / "config.json").read_text())["quantization"]["bits"] == 4

    qmodel, tok = mlx_lm.load(str(qbase))
    qmodel = make_adapter(qmodel, tmp_path / "adapter")
    out = fuse_model(qbase, tmp_path / "adapter", tmp_path / "fused")

    config = json.loads((out / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    assert config["torch_dtype"] == "float16"  # a bf16 quantized base merges into float16 (more precise)
    fused, _ = mlx_lm.load(str(out))
    params = dict(tree_flatten(fused.parameters()))
    assert not [k for k in params if k.endswith((".scales", ".biases")) or "lora" in k]
    assert {v.dtype for v in params.values()} == {mx.float16}

    # merged weight = dequantized base + adapter delta, computed exactly here in float32.
    # The fuse merges in float32 too and rounds once to float16: at most 2^-11 |x| (plus
    # float32 noise of the sum).
    def dequantized(q):
        return mx.dequantize(q.weight, q.scales.astype(mx.float32), q.biases.astype(mx.float32),
                             q.group_size, q.bits, mode=q.mode)

    n_checked = 0
    for name, m in qmodel.named_modules():
        if isinstance(m, LoRALinear):
            q = m.linear
            w = np.array(dequantized(q))
            delta = np.array(m.scale * (m.lora_b.T @ m.lora_a.T))
            got = np.array(params[f"{name}.weight"].astype(mx.float32))
            scale_q = w - np.repeat(np.array(q.biases.astype(mx.float32)), q.group_size, axis=-1)
            bound = 2**-11 * np.abs(w + delta) + 2**-20 * (np.abs(w) + np.abs(delta)) + 1e-7
            assert np.all(np.abs(got - (w + delta)) <= bound), name
            assert np.corrcoef((got - w).ravel(), delta.ravel())[0, 1] > 0.99, name  # the delta is in
            n_checked += 1
    assert n_checked == 14  # 7 projections x 2 layers
    e = qmodel.model.embed_tokens  # no adapter: only dequantized
    exact = np.array(dequantized(e))
    got = np.array(params["model.embed_tokens.weight"].astype(mx.float32))
    scale_q = exact - np.repeat(np.array(e.biases.astype(mx.float32)), e.group_size, axis=-1)
    assert np.all(np.abs(got - exact) <= 2**-11 * np.abs(exact) + 2**-20 * np.abs(scale_q) + 1e-7)

    # and llama.cpp runs the fused model as MLX does (same f16 tolerance as test_gguf_export)
    res = export_gguf(out, tmp_path / "fused.gguf", "f16")
    summary = gguf_metadata_summary(res["path"])
    original = json.loads((src / "tokenizer_config.json").read_text())["chat_template"]
    assert summary["chat_template"] == original  # survives mlx_lm.convert's re-save and the fuse
    assert (summary["tokenizer_pre"], summary["eos_id"], summary["add_bos"]) == ("qwen2", 151645, False)
    llm = llama_cpp.Llama(model_path=res["path"], n_ctx=256, logits_all=True, verbose=False, n_threads=2, seed=0)
    try:
        fused.set_dtype(mx.float32)
        for p in PROMPTS:
            ids = llm.tokenize(p.encode(), add_bos=False, special=True)
            assert ids == tok.encode(p)
            llm.reset()
            llm.eval(ids)
            got = np.array(llm.scores[: len(ids)])
            ref = np.array(fused(mx.array([ids]))[0])
            assert np.abs(got - ref).max() < 0.05
            assert np.all(ref[np.arange(len(ids)), got.argmax(-1)] >= ref.max(-1) - 0.05)
    finally:
        llm.close()


def test_adapter_that_does_not_fit_is_refused(tmp_path, tmp_path_factory):
    base = tiny_dir(tmp_path_factory, "tinyllama")
    model, _ = mlx_lm.load(str(base))
    make_adapter(model, tmp_path / "adapter")
    # as if trained on a model with twice the hidden size: every lora_a has twice the rows
    path = tmp_path / "adapter" / "adapters.safetensors"
    weights = {k: mx.concatenate([v, v], axis=0) if k.endswith("lora_a") else v for k, v in mx.load(str(path)).items()}
    mx.save_safetensors(str(path), weights)
    with pytest.raises(TuneloomError) as err:
        fuse_model(base, tmp_path / "adapter", tmp_path / "fused")
    assert "same base model" in err.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_missing_inputs_and_cancel_write_nothing(tmp_path, tmp_path_factory):
    base = tiny_dir(tmp_path_factory, "tinyllama")
    with pytest.raises(TuneloomError):
        fuse_model(base, tmp_path / "no-adapter", tmp_path / "fused")
    (tmp_path / "empty-adapter").mkdir()
    (tmp_path / "empty-adapter" / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": LORA}))
    with pytest.raises(TuneloomError):
        fuse_model(base, tmp_path / "empty-adapter", tmp_path / "fused")

    model, _ = mlx_lm.load(str(base))
    make_adapter(model, tmp_path / "adapter")
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        fuse_model(base, tmp_path / "adapter", tmp_path / "fused", cancel=token)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "empty-adapter"]

    # an existing fused folder is replaced only by a complete new one
    (tmp_path / "fused").mkdir()
    (tmp_path / "fused" / "old.txt").write_text("old")
    out = fuse_model(base, tmp_path / "adapter", tmp_path / "fused")
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "empty-adapter", "fused"]
    shutil.rmtree(out)
