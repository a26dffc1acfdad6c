"""Qwen3.5 end to end on a tiny model in the real Hugging Face layout (fixtures/qwen35.py):
the fixture itself, the catalog figures, validation, GGUF export checked against llama.cpp
(tokenization, F32/F16 logits, metadata, Q8_0 / Q4_K_M equal to llama.cpp's own quantizer
and agreeing with MLX, every type loading), training targets, the selective head, packing
refused, a trained-then-fused export, and the CLI.
"""
from __future__ import annotations

import ctypes
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

import mlx.core as mx  # noqa: E402
import mlx_lm  # noqa: E402

from core import catalog  # noqa: E402
from core.events import RecordingEvents  # noqa: E402
from core.export.gguf import export_gguf, gguf_metadata_summary, read_tensor_table  # noqa: E402
from fixtures.qwen35 import (QWEN35_REF, bf16_to_f32, cached_tiny_qwen35, qwen35_added_tokens,  # noqa: E402
                             qwen35_tensors, tiny_layout, tiny_qwen35_config, write_qwen35_tokenizer_json)

ROOT = Path(__file__).resolve().parent.parent
# the tiny model is exported a dozen times here: its 248k-token vocabulary is read once (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("shared_vocab")

# Mixed scripts (Latin with accents, CJK, Cyrillic, Arabic, Devanagari and Thai with their
# combining marks, Hangul, emoji with joiners), code, whitespace runs, digits, contractions.
# NFC text: the tokenizer normalises to NFC and llama.cpp does not normalise, so text in
# another form tokenizes differently in the two (as for Qwen2, whose tokenizer does the same).
CORPUS = [
    "Hello world! How are you doing today?",
    "def add(a, b):\n    return a + b\n\n\nclass Foo:\n    def bar(self):\n        if True:\n            pass\n",
    "a  b   c    d     e\t\tf\n\n\n  g   \n    ",
    "   leading spaces and trailing   ",
    "我想在苹果公司工作，今天天气很好。你好，世界！",
    "नमस्ते दुनिया, आप कैसे हैं? ภาษาไทย สวัสดีครับ مرحبا بالعالم 안녕하세요 세계",
    "🚀 rocket 😶\u200d🌫️ fog ✅ done 🦙🦙 llamas",
    "3 33 333 3333 33333 12345.678 3..3 3...3",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    "café naïve résumé Ångström — «quotes» “curly” ‘single’ ﬁ ligature",
    "------======= нещо на Български '''''''```````\"\"\"\"......!!!!!!??????",
    "line one\r\nline two\rline three\n",
    '{"name": "Ada", "tags": ["x", "y"], "n": 3.14}\n<tool_call>\n{"a": 1}\n</tool_call>',
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nok<|im_end|><|endoftext|>",
]
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a haiku about   spaces.\nThanks!"},
    {"role": "assistant", "content": "Tabs and spaces fight\n    four of them hold the line\n  两 emoji 🚀"},
    {"role": "user", "content": "Again?"},
]
PROMPTS = [
    "Hello world, this is a test of the tiny model. It has random weights.",
    "def f(x):\n    return x * 2\n\n# 中文 😀 and more words here to make it longer",
]
# F32 export vs MLX in float32: only summation order differs (measured max 0.004).
F32_LOGIT_ATOL = 0.02
# F16 export: llama.cpp rounds activations to f16 before each f16 matmul. Measured here:
# max 0.03-0.05, mean ~0.003; the tolerance is that of the other families
# (test_gguf_export.F16_LOGIT_ATOL), with the fixture's weight scale chosen so that its
# sensitivity to rounding is theirs (fixtures/qwen35.py).
F16_LOGIT_ATOL = 0.08


def load_llama(path) -> "llama_cpp.Llama":
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=2, seed=0)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def mlx_logits(model_dir: Path, token_lists: list[list[int]]) -> np.ndarray:
    model, _ = mlx_lm.load(str(model_dir))
    model.set_dtype(mx.float32)
    return np.concatenate([np.array(model(mx.array([ids]))[0]) for ids in token_lists])


@pytest.fixture(scope="module")
def q35(tmp_path_factory) -> Path:
    return cached_tiny_qwen35(tmp_path_factory.getbasetemp() / "tiny-models")


@pytest.fixture(scope="module")
def hf_tok(q35):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(q35))


@pytest.fixture(scope="module")
def token_lists(q35, hf_tok):
    chat = hf_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    return [hf_tok.encode(t, add_special_tokens=False) for t in PROMPTS + [chat]]


@pytest.fixture(scope="module")
def reference(q35, token_lists):
    return mlx_logits(q35, token_lists)


@pytest.fixture(scope="module")
def f16(q35, tmp_path_factory):
    events = RecordingEvents()
    res = export_gguf(q35, tmp_path_factory.mktemp("q35-gguf") / "tiny-f16.gguf", "f16", events=events)
    llm = load_llama(res["path"])
    yield res, llm, events
    llm.close()


# --------------------------------------------------------------------------- the fixture

def test_fixture_is_the_hub_layout(q35):
    """Tensor names, shapes and dtypes are what transformers writes (tiny-layout.json), plus the
    hub's MTP head; the config is tiny-layout's; tokenizer.json is transformers' own build."""
    from core.hub import read_safetensors_header

    header, _ = read_safetensors_header(q35 / "model.safetensors-00001-of-00001.safetensors")
    stored = {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"}
    layout = {t["name"]: (t["dtype"], t["shape"]) for t in tiny_layout()["tensors"]}
    assert {k: v for k, v in stored.items() if not k.startswith("mtp.")} == layout
    assert sorted({k.split(".")[1] for k in stored if k.startswith("mtp.")}) == [
        "fc", "layers", "norm", "pre_fc_norm_embedding", "pre_fc_norm_hidden"]
    index = json.loads((q35 / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(stored)
    config = json.loads((q35 / "config.json").read_text())
    assert config == tiny_qwen35_config(mtp=True)
    real = json.loads((QWEN35_REF / "config.json").read_text())
    assert {k for k in config["text_config"]} >= set(real["text_config"]) - {"mtp_num_hidden_layers"}

    from transformers import Qwen3_5Tokenizer
    from tokenizers import AddedToken

    vocab = json.loads((QWEN35_REF / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(x.split(" ")) for x in (QWEN35_REF / "merges.txt").read_text(encoding="utf-8").split("\n") if x]
    hf = Qwen3_5Tokenizer(vocab=vocab, merges=merges)
    for t in qwen35_added_tokens():
        at = AddedToken(t["content"], single_word=t["single_word"], lstrip=t["lstrip"], rstrip=t["rstrip"],
                        normalized=t["normalized"], special=t["special"])
        (hf.backend_tokenizer.add_special_tokens if t["special"] else hf.backend_tokenizer.add_tokens)([at])
    assert json.loads(hf.backend_tokenizer.to_str()) == json.loads((q35 / "tokenizer.json").read_text(encoding="utf-8"))


def test_norm_weights_are_exact_for_both_readers(q35):
    """The fixture's zero-centred norms: 1 + w is exact in bfloat16 (see fixtures/qwen35.py)."""
    from core.export.gguf import _read_safetensors_index

    for t in _read_safetensors_index(q35 / "model.safetensors-00001-of-00001.safetensors"):
        if t.name.endswith("input_layernorm.weight"):
            w = t.read_f32()
            one_plus = w + 1
            assert np.array_equal(bf16_to_f32((one_plus.view(np.uint32) >> 16).astype(np.uint16)), one_plus)
            assert np.abs(w).max() > 0.05  # not all ones: a missing or doubled +1 shows


# --------------------------------------------------------------------------- catalog and hub

def test_parameter_formula_matches_the_real_layout():
    """qwen35_param_counts counts what transformers writes (tiny-layout.json) and what the hub's
    weight files hold (their published sizes less the header)."""
    layout = tiny_layout()
    counts = catalog.qwen35_param_counts(tiny_qwen35_config(mtp=True))
    mtp = sum(math.prod(t["shape"]) for t in qwen35_tensors(mtp=True) if t["name"].startswith("mtp."))
    text = sum(math.prod(t["shape"]) for t in layout["tensors"] if t["name"].startswith("model.language_model."))
    vision = sum(math.prod(t["shape"]) for t in layout["tensors"] if t["name"].startswith("model.visual."))
    assert (counts["text"], counts["vision"], counts["mtp"]) == (text, vision, mtp)
    for name, size in (("Qwen3.5-0.8B", 1_746_942_600), ("Qwen3.5-2B", 4_548_221_488)):
        cfg = json.loads((QWEN35_REF.parent / name / "config.json").read_text())
        header = size - 2 * catalog.qwen35_param_counts(cfg)["total"]
        assert 40_000 < header < 120_000, (name, header)  # a JSON header of ~500-600 tensors


def test_catalog_lists_qwen35_with_sizes():
    entries = catalog.load_catalog()
    by_hub = {e.hub_id: e for e in entries if e.hub_id}
    for size, layers in (("0.8B", 24), ("2B", 24)):
        e = by_hub[f"Qwen/Qwen3.5-{size}"]
        q = by_hub[f"mlx-community/Qwen3.5-{size}-MLX-4bit"]
        real = json.loads((QWEN35_REF.parent / f"Qwen3.5-{size}" / "config.json").read_text())
        counts = catalog.qwen35_param_counts(real)
        assert e.architecture == "Qwen3_5ForConditionalGeneration" and e.family == "Qwen3.5"
        assert e.params == counts["total"] and e.raw["text_params"] == counts["text"]
        assert e.raw["weight_bytes"] == 2 * counts["text"]
        assert e.download_bytes > 2 * counts["total"]  # the weight file holds the vision tower and MTP head too
        assert e.config["num_hidden_layers"] == layers and e.revision != "main"
        assert q.quantized and q.base == e.key and q.raw["weight_bytes"] == catalog.quantized_weight_bytes(real)
        assert q.download_bytes < e.download_bytes / 2
        for x in (e, q):
            assert x.train_memory_bytes == catalog.train_memory_estimate(x)
            assert x.raw["train_memory_checkpointed_bytes"] < x.train_memory_bytes
    # the download sizes are the hub's file sizes at the pinned revisions
    assert by_hub["Qwen/Qwen3.5-0.8B"].download_bytes == 1_769_916_415
    assert by_hub["Qwen/Qwen3.5-2B"].download_bytes == 4_571_208_864
    # judged with the settings that fit: "Save memory" on (issue 27: the card said "too large, 119 GB")
    ok, why = catalog.fits(by_hub["Qwen/Qwen3.5-0.8B"], 16 * 2**30)
    assert ok and "Save memory" in why and "13.4 GB" in why and "119" not in why
    ok, why = catalog.fits(by_hub["Qwen/Qwen3.5-0.8B"], 8 * 2**30)
    assert not ok and "even with" in why and "13.4 GB" in why


def test_validate_model_dir_accepts_and_explains(q35):
    from core.hub import expected_tensors, validate_model_dir

    check = validate_model_dir(q35)
    assert check.ok, check.problems
    assert check.architecture == "Qwen3_5ForConditionalGeneration" and check.has_chat_template
    assert any("vision tower" in n and "multi-token-prediction" in n for n in check.notes)
    needed = expected_tensors(json.loads((q35 / "config.json").read_text()))
    assert "model.language_model.layers.0.linear_attn.in_proj_qkv" in needed
    assert "model.language_model.layers.3.self_attn.q_norm" in needed
    assert not any("layers.3.linear_attn" in n or "layers.0.self_attn" in n for n in needed)


def test_validate_model_dir_finds_a_missing_deltanet_tensor(q35, tmp_path):
    import shutil

    from core.hub import validate_model_dir
    from fixtures.qwen35 import random_weights, write_safetensors

    bad = tmp_path / "bad"
    shutil.copytree(q35, bad)
    weights = random_weights(0)
    del weights["model.language_model.layers.1.linear_attn.out_proj.weight"]
    write_safetensors(bad / "model.safetensors-00001-of-00001.safetensors", weights)
    (bad / "model.safetensors.index.json").unlink()
    check = validate_model_dir(bad, load_tokenizer=False)
    assert check.codes == ["missing_tensors"]
    assert "layers.1.linear_attn.out_proj" in check.problems[0].message


# --------------------------------------------------------------------------- export vs llama.cpp

def test_tokenization_matches_hf(f16, hf_tok):
    _, llm, _ = f16
    chat = hf_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    mismatches = []
    for text in CORPUS + [chat]:
        ref = hf_tok.encode(text, add_special_tokens=False)
        got = llm.tokenize(text.encode(), add_bos=False, special=True)
        if got != ref:
            mismatches.append((text[:40], ref[:12], got[:12]))
        else:
            assert llm.detokenize(got, special=True) == text.encode()
    assert not mismatches, mismatches


def test_metadata_is_what_llama_cpp_expects(f16, q35, hf_tok):
    res, llm, events = f16
    s, meta = gguf_metadata_summary(res["path"]), llm.metadata
    cfg = json.loads((q35 / "config.json").read_text())["text_config"]
    assert s["arch"] == res["arch"] == "qwen35"
    assert s["tokenizer_model"] == "gpt2" and s["tokenizer_pre"] == "qwen35"
    im_end, endoftext = hf_tok.convert_tokens_to_ids("<|im_end|>"), hf_tok.convert_tokens_to_ids("<|endoftext|>")
    assert s["eos_id"] == im_end == llm.token_eos() and s["pad_id"] == endoftext
    assert s["add_bos"] is False and s["bos_id"] is None
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert llama_cpp.llama_vocab_is_eog(vocab, im_end) and llama_cpp.llama_vocab_is_eog(vocab, endoftext)
    assert llm.n_vocab() == s["n_tokens"] == cfg["vocab_size"] == 248320
    # the MTP head is dropped: no nextn layers, block_count is the text model's
    assert int(meta["qwen35.block_count"]) == cfg["num_hidden_layers"] == 4
    assert "qwen35.nextn_predict_layers" not in meta
    assert int(meta["qwen35.ssm.conv_kernel"]) == cfg["linear_conv_kernel_dim"]
    assert int(meta["qwen35.ssm.state_size"]) == cfg["linear_key_head_dim"]
    assert int(meta["qwen35.ssm.group_count"]) == cfg["linear_num_key_heads"]
    assert int(meta["qwen35.ssm.time_step_rank"]) == cfg["linear_num_value_heads"]
    assert int(meta["qwen35.ssm.inner_size"]) == cfg["linear_value_head_dim"] * cfg["linear_num_value_heads"]
    assert int(meta["qwen35.full_attention_interval"]) == 4
    assert int(meta["qwen35.rope.dimension_count"]) == cfg["head_dim"] // 4  # partial_rotary_factor 0.25
    assert float(meta["qwen35.rope.freq_base"]) == cfg["rope_parameters"]["rope_theta"]
    assert int(meta["qwen35.attention.key_length"]) == cfg["head_dim"]
    # the header walk, not gguf.GGUFReader (tens of seconds on this vocabulary; test_gguf_export.py
    # checks the two read the same)
    arrays: dict = {}
    _, table, _ = read_tensor_table(res["path"], arrays)
    assert arrays["qwen35.rope.dimension_sections"][1].tolist() == [11, 11, 10, 0]
    types = {t.name: t.qtype.name for t in table}
    assert not any("visual" in n or "nextn" in n for n in types)
    assert types["blk.0.ssm_conv1d.weight"] == "F32" and types["blk.0.ssm_a"] == "F32"
    assert types["blk.0.attn_qkv.weight"] == types["blk.3.attn_q.weight"] == "F16"
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in table}
    assert shapes["blk.0.ssm_conv1d.weight"] == (4, 256)  # ggml order: kernel, channels
    assert any("vision tower" in text for _, text in events.logs)


def test_f32_export_equals_mlx(q35, tmp_path, token_lists, reference):
    """Every transform (norm offset, -exp(A_log), conv reshape, V-head tiling) is exact."""
    res = export_gguf(q35, tmp_path / "tiny-f32.gguf", "f32")
    llm = load_llama(res["path"])
    try:
        got = np.concatenate([llama_logits(llm, t) for t in token_lists])
    finally:
        llm.close()
    err = np.abs(got - reference)
    assert err.max() < F32_LOGIT_ATOL, err.max()
    assert np.array_equal(got.argmax(-1), reference.argmax(-1))


def test_v_head_tiling_is_needed(q35, tmp_path, token_lists, reference, monkeypatch):
    """Negative control: without the value-head reorder (2 key / 4 value heads) llama.cpp's
    logits are far off, so the agreement above is not a property of any export."""
    import core.export.gguf_tables as tables  # the Qwen3.5 tensor rules (core.export.gguf reads them there)

    monkeypatch.setattr(tables, "_tile_v_heads", lambda x, *a, **k: x)
    res = export_gguf(q35, tmp_path / "untiled.gguf", "f32")
    llm = load_llama(res["path"])
    try:
        got = np.concatenate([llama_logits(llm, t) for t in token_lists])
    finally:
        llm.close()
    assert np.abs(got - reference).max() > 10 * F16_LOGIT_ATOL


def _check_f16(got: np.ndarray, ref: np.ndarray) -> None:
    err = np.abs(got - ref)
    assert err.max() < F16_LOGIT_ATOL, f"max abs logit error {err.max():.4f}"
    assert err.mean() < F16_LOGIT_ATOL / 10
    rows = np.arange(len(ref))
    assert np.all(ref[rows, got.argmax(-1)] >= ref.max(-1) - F16_LOGIT_ATOL)
    top2 = np.sort(ref, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * F16_LOGIT_ATOL
    assert clear.mean() > 0.75
    assert np.array_equal(got.argmax(-1)[clear], ref.argmax(-1)[clear])


def test_f16_logits_match_mlx(f16, token_lists, reference):
    _, llm, _ = f16
    got = np.concatenate([llama_logits(llm, t) for t in token_lists])
    _check_f16(got, reference)


FTYPES = {"q8_0": 7, "q4_k_m": 15}  # llama_ftype


def test_quantized_exports_equal_llama_quantize_and_track_mlx(q35, f16, tmp_path, token_lists, reference):
    """Q8_0 and Q4_K_M: the same bytes as llama.cpp's own quantizer run on our F16 file, and
    the same agreement with MLX as the other families (test_gguf_export)."""
    f16_res, _, _ = f16
    measured = {}
    for quant, ftype in FTYPES.items():
        ours = export_gguf(q35, tmp_path / f"ours-{quant}.gguf", quant)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = 1
        theirs = tmp_path / f"llama-{quant}.gguf"
        assert llama_cpp.llama_model_quantize(f16_res["path"].encode(), str(theirs).encode(), ctypes.byref(params)) == 0
        a, b = read_tensor_table(ours["path"]), read_tensor_table(theirs)
        data_a, data_b = np.memmap(ours["path"], np.uint8, mode="r"), np.memmap(theirs, np.uint8, mode="r")
        tb = {t.name: t for t in b[1]}
        for t in a[1]:
            u = tb[t.name]
            assert (t.qtype, t.shape) == (u.qtype, u.shape), t.name
            assert np.array_equal(data_a[t.offset:t.offset + t.nbytes], data_b[u.offset:u.offset + u.nbytes]), t.name
        assert len(a[1]) == len(b[1])
        del data_a, data_b
        llm = load_llama(ours["path"])
        try:
            got = np.concatenate([llama_logits(llm, t) for t in token_lists])
        finally:
            llm.close()
        corr = np.array([np.corrcoef(g, r)[0, 1] for g, r in zip(got, reference)])
        measured[quant] = (corr.mean(), corr.min(), float(np.mean(got.argmax(-1) == reference.argmax(-1))))
    corr_mean, corr_min, top1 = measured["q8_0"]
    assert corr_mean > 0.999 and corr_min > 0.998 and top1 >= 0.85, measured
    corr_mean, corr_min, top1 = measured["q4_k_m"]
    assert corr_mean > 0.95 and corr_min > 0.9, measured


@pytest.mark.parametrize("quant", ["bf16", "q4_0", "q5_k_m", "q6_k"])
def test_every_quant_type_loads(q35, tmp_path, token_lists, reference, quant):
    res = export_gguf(q35, tmp_path / f"t-{quant}.gguf", quant)
    llm = load_llama(res["path"])
    try:
        got = llama_logits(llm, token_lists[0])
    finally:
        llm.close()
    ref = reference[: len(token_lists[0])]
    corr = np.array([np.corrcoef(g, r)[0, 1] for g, r in zip(got, ref)])
    assert np.isfinite(got).all() and corr.mean() > 0.9, corr.mean()


def test_mlx_saved_layout_exports_the_same(q35, f16, tmp_path):
    """A folder saved by mlx-lm (its own names, RMSNorm offset added, conv1d [C, K, 1]) gives the
    same GGUF tensors as the hub layout."""
    import shutil

    from mlx_lm.utils import load_model, save_model

    model, _ = load_model(q35)
    mlx_dir = tmp_path / "mlx-layout"
    save_model(mlx_dir, model)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(q35 / f, mlx_dir / f)
    res = export_gguf(mlx_dir, tmp_path / "mlx.gguf", "f16")
    a, b = read_tensor_table(res["path"]), read_tensor_table(f16[0]["path"])
    da, db = np.memmap(res["path"], np.uint8, mode="r"), np.memmap(f16[0]["path"], np.uint8, mode="r")
    tb = {t.name: t for t in b[1]}
    assert {t.name for t in a[1]} == set(tb)
    for t in a[1]:
        u = tb[t.name]
        assert t.qtype == u.qtype and np.array_equal(da[t.offset:t.offset + t.nbytes], db[u.offset:u.offset + u.nbytes]), t.name


# --------------------------------------------------------------------------- training

def test_adapter_targets_for_the_hybrid_layers(q35):
    from mlx.utils import tree_flatten

    from core.train import TrainConfig, add_adapters, load_base

    for targets in ("attention", "all"):
        model, config = load_base(q35)
        add_adapters(model, TrainConfig(model=str(q35), targets=targets, rank=4))
        names = {k.rsplit(".", 1)[0] for k, _ in tree_flatten(model.trainable_parameters())}
        layer0 = {n.split("layers.0.")[1] for n in names if ".layers.0." in n}
        layer3 = {n.split("layers.3.")[1] for n in names if ".layers.3." in n}
        mixer0 = {"linear_attn.in_proj_qkv", "linear_attn.in_proj_z", "linear_attn.out_proj"}
        mixer3 = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
        mlp = {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} if targets == "all" else set()
        assert layer0 == mixer0 | mlp and layer3 == mixer3 | mlp, (layer0, layer3)
        n = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
        assert n == catalog.lora_param_count(config, targets, 4)  # the catalog counts what the trainer adds


def test_selective_head_loss_equals_full_loss(q35):
    from core.tokens import Encoded
    from core.train import _loss, load_base, pad_batch, selective_head

    model, _ = load_base(q35)
    assert selective_head(model)
    rng = np.random.default_rng(0)
    seqs = [Encoded(list(rng.integers(0, 5000, n)), [False] * (n // 2) + [True] * (n - n // 2)) for n in (20, 33)]
    full, nf = _loss(model, *pad_batch(seqs, 0, 64, select=False))
    sel, ns = _loss(model, *pad_batch(seqs, 0, 64, select=True))
    assert float(nf) == float(ns) > 0
    assert abs(float(full) - float(sel)) < 1e-4


def _write_data(path: Path, n: int = 24) -> Path:
    rows = []
    for i in range(n):
        rows.append({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                  {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tl(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_train_fuse_export_from_the_cli(q35, tmp_path, hf_tok):
    """`tuneloom train` (packing asked for: refused with the reason) and `tuneloom export` on the
    tiny Qwen3.5; the fused folder is a plain HF checkpoint and llama.cpp's F16 logits equal
    mlx-lm's for base + adapter."""
    data = _write_data(tmp_path / "train.jsonl")
    run = tmp_path / "run"
    p = tl("train", "--model", q35, "--data", data, "--out", run, "--iters", "4", "--rank", "4", "--batch", "2",
           "--max-seq-len", "64", "--lr", "5e-3", "--targets", "all", "--pack", "--valid-every", "0")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Packing is off for this model" in p.stdout + p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    assert lines[-1]["state"] == "done" and lines[-1]["steps"] == 4
    assert (run / "adapters.safetensors").is_file()

    gguf_path = tmp_path / "out" / "tuned.gguf"
    p = tl("export", run, "--gguf", gguf_path, "--quant", "f16")
    assert p.returncode == 0, p.stderr[-3000:]
    assert gguf_path.is_file()
    from core.export.pipeline import gguf_file_bytes  # the size the Export page shows before writing

    assert abs(gguf_file_bytes(q35, "f16") - gguf_path.stat().st_size) <= 0.05 * gguf_path.stat().st_size

    # base + adapter in mlx-lm: the reference for the fused export
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import load_model

    model, _ = load_model(q35)
    model = load_adapters(model, str(run))
    model.set_dtype(mx.float32)
    chat = hf_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    token_lists = [hf_tok.encode(t, add_special_tokens=False) for t in PROMPTS + [chat]]
    ref = np.concatenate([np.array(model(mx.array([ids]))[0]) for ids in token_lists])
    base = mlx_logits(q35, token_lists)
    assert np.abs(ref - base).max() > 0.5  # the adapter changed the model

    llm = load_llama(gguf_path)
    try:
        got = np.concatenate([llama_logits(llm, t) for t in token_lists])
        assert llm.tokenize(chat.encode(), add_bos=False, special=True) == token_lists[-1]
    finally:
        llm.close()
    # the fused weights are rounded to the base's bfloat16: allow that on top of f16 rounding
    err = np.abs(got - ref)
    assert err.max() < 4 * F16_LOGIT_ATOL and err.mean() < F16_LOGIT_ATOL / 4, (err.max(), err.mean())
    clear = np.diff(np.sort(ref, -1)[:, -2:], axis=-1)[:, 0] > 8 * F16_LOGIT_ATOL
    assert clear.mean() > 0.5 and np.array_equal(got.argmax(-1)[clear], ref.argmax(-1)[clear])


def test_fused_folder_is_hf_layout(q35, tmp_path):
    """core.export.fuse writes a Qwen3.5 back in the Hugging Face layout; mlx-lm reads it as it read the base."""
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx.utils import tree_flatten

    from core.export.fuse import fuse_model
    from core.hub import read_safetensors_header, validate_model_dir

    from mlx_lm.utils import load_model

    model, _ = load_model(q35)
    model.freeze()
    lora = {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": ["linear_attn.in_proj_qkv", "self_attn.q_proj"]}
    linear_to_lora_layers(model, 4, lora)
    mx.random.seed(1)
    params = {k: (0.05 * mx.random.normal(v.shape) if k.endswith("lora_b") else v)
              for k, v in tree_flatten(model.trainable_parameters())}
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    mx.save_safetensors(str(adapter / "adapters.safetensors"), params)
    (adapter / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora", "num_layers": 4,
                                                             "lora_parameters": lora}))
    out = fuse_model(q35, adapter, tmp_path / "fused")
    header = {}
    for f in out.glob("model*.safetensors"):
        header.update({k: v for k, v in read_safetensors_header(f)[0].items() if k != "__metadata__"})
    assert all(k.startswith("model.language_model.") for k in header)
    assert header["model.language_model.layers.0.linear_attn.conv1d.weight"]["shape"] == [256, 1, 4]
    base = {t["name"]: t for t in qwen35_tensors(mtp=False)}
    for k, v in header.items():
        assert v["shape"] == base[k]["shape"], k
    assert validate_model_dir(out).ok

    # mlx-lm reads the fused folder as exactly the merged model, rounded to the base's bfloat16
    from mlx.utils import tree_unflatten

    model.load_weights(list(params.items()), strict=False)
    model.update_modules(tree_unflatten([(n, m.fuse()) for n, m in model.named_modules() if hasattr(m, "fuse")]))
    model.set_dtype(mx.bfloat16)
    want = dict(tree_flatten(model.parameters()))
    reread, _ = load_model(out)
    got = dict(tree_flatten(reread.parameters()))
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and mx.array_equal(got[k], want[k]).item(), k


def test_try_generation_uses_the_recurrent_cache_correctly(q35, hf_tok):
    """Try's generation loop (chunked prefill, cache reuse) on the hybrid model gives the tokens a
    cache-free greedy loop gives, and greedy_batch (the demo-style evaluation) the same text."""
    from core import generate

    cm = generate.ChatModel(q35)
    prompt = cm.encoder.prompt_ids([{"role": "user", "content": "Count: one two three"}])
    old_chunk, generate.PREFILL_CHUNK = generate.PREFILL_CHUNK, 7  # several prefill chunks
    try:
        got = cm.generate_ids(prompt, max_tokens=6)
    finally:
        generate.PREFILL_CHUNK = old_chunk
    ids, want = list(prompt), []
    for _ in range(6):
        nxt = int(np.argmax(np.array(cm.model(mx.array([ids]))[0, -1])))
        want.append(nxt)
        ids.append(nxt)
        if nxt in cm.encoder.eos_ids:
            break
    assert got == want
    texts = cm.greedy_batch([prompt, prompt[:-3]], [6, 6])
    assert texts[0] == cm.encoder.decode(got)


def test_a_run_trained_on_reasoning_exports_thinking_templates(q35, tmp_path):
    """`"thinking": true` on Qwen3.5 (reasoning data): the Modelfile TEMPLATE and the embedded template both
    think, Ollama turns thinking on by default, and the default prompt opens the think block as training did."""
    from core import chat_templates as ct
    from core.export.pipeline import plan_export
    from core.tokens import ChatEncoder

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": str(q35), "max_seq_len": 256, "thinking": True}))
    (run / "adapter_config.json").write_text(json.dumps({"base_model": str(q35), "fine_tune_type": "lora"}))
    (run / "adapters.safetensors").write_bytes(b"")
    plan = plan_export(run, modelfile=tmp_path / "Modelfile")
    assert plan.thinking and plan.chat_format.kind == "qwen3.5-thinking"
    assert ct.go_template_capabilities(plan.chat_format.template) == {"thinking"}
    assert "thinking" in ct.chat_template_capabilities(plan.embedded_template.template)
    setup = ct.OllamaSetup(plan.chat_format.template, plan.embedded_template.template, architecture="qwen35")
    assert ct.default_think(setup) is True
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    want = ChatEncoder(q35, thinking=True).render(messages, add_generation_prompt=True)
    assert want.endswith("<|im_start|>assistant\n<think>\n")
    tokens = ct.special_tokens(json.loads((q35 / "tokenizer_config.json").read_text()))
    assert ct.ollama_prompt(setup, messages, think=True, tokens=tokens) == want


def test_reasoning_data_trains_and_exports_from_the_cli(q35, tmp_path):
    """Data whose answers carry reasoning: `tuneloom train` records thinking on, and `tuneloom export` writes a
    GGUF whose embedded template thinks and a Modelfile TEMPLATE with Ollama's thinking tags (no refusal)."""

    data = tmp_path / "think.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"<think>\nAdd {i} to itself.\n</think>\n\n{2 * i}"}]}) + "\n"
        for i in range(12)), encoding="utf-8")
    run = tmp_path / "run"
    p = tl("train", "--model", q35, "--data", data, "--out", run, "--iters", "2", "--rank", "4", "--batch", "2",
           "--max-seq-len", "64", "--valid-every", "0")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["thinking"] is True
    out = tmp_path / "out"
    p = tl("export", run, "--gguf", out / "tuned.gguf", "--quant", "q8_0", "--modelfile", out / "Modelfile")
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["thinking"] is True
    modelfile = (out / "Modelfile").read_text(encoding="utf-8")
    assert "{{ .Thinking }}" in modelfile and "{{ else }}<think>\n{{ end }}" in modelfile
    embedded = read_tensor_table(out / "tuned.gguf")[0]["tokenizer.chat_template"]
    assert "enable_thinking" in embedded and "<think>" in embedded
