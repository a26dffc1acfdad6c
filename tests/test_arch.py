"""One table per fact (issue 24): architectures, GGUF types, the default preset and the memory shares are
each kept once, and every reader agrees with that one place."""
import json
import signal

import pytest

from core import arch, catalog

from core.export import quants


def test_every_reader_of_architectures_reads_core_arch():
    import core.export.fuse as fuse
    import core.export.gguf as ge
    import core.hub as hub
    import core.train as train

    assert set(ge.ARCHITECTURES) == set(arch.BY_HF_CLASS)
    for a in arch.ARCHS:
        for cls in a.hf_classes:
            spec = ge.ARCHITECTURES[cls]
            assert spec.arch == getattr(ge.gguf.MODEL_ARCH, a.gguf_arch)
            assert spec.permute_qk == a.permute_qk and spec.text_config == a.text_config
            assert bool(spec.extra_block_biases) == a.qkv_bias
    # train adapts every family's projections; the catalog's LoRA count uses the same names
    assert set(train.ATTENTION_KEYS + train.DELTANET_KEYS + train.MLP_KEYS) == {
        k for a in arch.ARCHS for k in a.adapter_keys}
    assert set(catalog._ATTENTION + catalog._DELTANET + catalog._MLP) == {
        k.rsplit(".", 1)[-1] for a in arch.ARCHS for k in a.adapter_keys}
    assert train.packing_unavailable("qwen3_5") and train.packing_unavailable("llama") is None
    assert fuse._QWEN35_CENTRED_NORMS == arch.BY_MODEL_TYPE["qwen3_5"].centred_norms
    assert hub.fallback_chat_template("llama")[0] == "zephyr" and hub.fallback_chat_template("qwen2")[0] == "chatml"
    assert all(a.label in hub.SUPPORTED_SUMMARY for a in arch.ARCHS)
    # every curated model is one of the families
    for e in catalog.load_catalog():
        assert arch.for_hf_class(e.architecture) is not None, e.key


def test_the_expected_tensors_of_a_standard_block_follow_the_record():
    from core.hub import expected_tensors

    cfg = {"model_type": "qwen3", "num_hidden_layers": 1, "tie_word_embeddings": True}
    names = set(expected_tensors(cfg))
    assert {"model.layers.0.self_attn.q_norm", "model.layers.0.mlp.down_proj", "model.embed_tokens"} <= names
    assert "lm_head" not in names
    assert "model.layers.0.self_attn.q_norm" not in set(expected_tensors({**cfg, "model_type": "llama"}))


def test_one_table_of_gguf_types():
    import core.export.gguf as ge
    from core.export.pipeline import estimate_export_bytes  # noqa: F401  (the estimate reads the table)

    assert list(ge.QUANT_TYPES) == list(quants.QUANTS)
    assert quants.QUANTS["q4_k_m"].bytes_per_weight == 144 / 256  # gguf's GGML_QUANT_SIZES for Q4_K
    assert quants.QUANTS["q8_0"].bytes_per_weight == 34 / 32
    assert set(quants.OFFERED) <= set(quants.QUANTS) and quants.DEFAULT in quants.QUANTS
    assert all(q.blurb and q.label for q in quants.QUANTS.values())
    from core.events import TuneloomError

    with pytest.raises(TuneloomError, match="Unknown GGUF type") as err:
        quants.checked("q3_k")
    assert err.value.hint.startswith("Choose one of: f32, f16")
    assert quants.checked("Q4_K_M") == "q4_k_m"
    from app.cli import build_parser

    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["export"]._actions
                  if "--quant" in a.option_strings)
    assert list(action.choices) == list(quants.QUANTS) and action.default == quants.DEFAULT


def test_one_default_preset_and_one_pair_of_memory_shares():
    import core.presets as presets
    import core.train as train

    assert train.DEFAULT_PRESET == catalog.DEFAULT_PRESET == presets.DEFAULT_PRESET == "quick"
    assert (train.REFUSE_SHARE, train.WARN_SHARE) == (catalog.REFUSE_SHARE, catalog.WARN_SHARE) == (0.9, 0.6)
    # the catalog's memory figures are the default preset's
    assert json.loads(catalog.catalog_path().read_text())["memory_preset"] == presets.DEFAULT_PRESET


def _cli_config(monkeypatch, argv):
    import core.train
    from app import cli

    got = {}
    monkeypatch.setattr(core.train, "train", lambda cfg, **kw: got.setdefault("cfg", cfg) and {})
    before = signal.getsignal(signal.SIGINT)
    try:
        a = cli.build_parser().parse_args(["train", *argv])
        assert a.func(a) == 0
    finally:
        signal.signal(signal.SIGINT, before)
    return got["cfg"]


def _small_dataset(tmp_path, n=10):
    f = tmp_path / "small.jsonl"
    f.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}?"},
                                                  {"role": "assistant", "content": f"answer {i}."}]}) + "\n"
                         for i in range(n)))
    return f


def test_train_without_preset_starts_from_the_default_and_fits_the_data_as_the_train_page(monkeypatch, tmp_path,
                                                                                          capsys):
    from core.train import MIN_STEPS, PRESETS, TrainConfig, fit_to_data, preset_config, training_examples

    data = _small_dataset(tmp_path)
    cfg = _cli_config(monkeypatch, ["--model", "/m", "--data", str(data), "--out", str(tmp_path / "run")])
    quick = PRESETS["quick"]
    assert (cfg.targets, cfg.lr, cfg.rank) == (quick["targets"], quick["lr"], quick["rank"])
    # what the Train page would start: the preset fitted to this dataset (too few steps in one pass)
    n = training_examples(TrainConfig(model="/m", data=[str(data)]))
    fitted, notes = fit_to_data(preset_config("quick"), n)
    assert cfg.iters == fitted["iters"] == MIN_STEPS and cfg.warmup == fitted["warmup"] == MIN_STEPS // 10
    assert notes and all(f"note: {x}" in capsys.readouterr().err for x in notes[:1])
    # flags given still win over the preset; a step count given is kept, the warm-up capped to a tenth of it
    cfg = _cli_config(monkeypatch, ["--model", "/m", "--data", str(data), "--out", str(tmp_path / "run2"),
                                    "--preset", "balanced", "--iters", "40", "--rank", "4"])
    assert (cfg.targets, cfg.rank, cfg.iters, cfg.warmup) == ("all", 4, 40, 4)
