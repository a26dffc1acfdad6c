"""The curated catalog (resources/catalog.json) and core.catalog."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import catalog
from core.catalog import DEFAULT_PRESET, fits, load_catalog, train_memory_estimate
from tests.fixtures.tiny_models import MODELS_DIR

REQUIRED = ["Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B",
            "TinyLlama/TinyLlama-1.1B-Chat-v1.0"]
PINNED = {"Qwen/Qwen2.5-0.5B-Instruct": "7ae557604adf67be50417f59c2c2f167def9a775",
          "Qwen/Qwen3-0.6B": "c1899de289a04d12100db370d81485cdf75e47ca",
          "TinyLlama/TinyLlama-1.1B-Chat-v1.0": "fe8a4ea1ffedaf415f4da2f062534de366a451e6",
          "Qwen/Qwen3.5-0.8B": "2fc06364715b967f1860aea9cf38778875588b17",
          "Qwen/Qwen3.5-2B": "15852e8c16360a2fea060d615a32b45270f8a8fc"}
# the real hub configs (byte-identical copies) the estimates must come from
REFERENCE = {"Qwen/Qwen2.5-0.5B-Instruct": MODELS_DIR / "Qwen2.5-0.5B-Instruct",
             "Qwen/Qwen3-0.6B": MODELS_DIR / "Qwen3-0.6B",
             "TinyLlama/TinyLlama-1.1B-Chat-v1.0": MODELS_DIR / "TinyLlama-1.1B-Chat-v1.0",
             "Qwen/Qwen2.5-1.5B-Instruct": Path("/work/shared/reference-models/Qwen2.5-1.5B-Instruct")}
GB = 2**30


@pytest.fixture(scope="module")
def entries():
    return load_catalog()


def test_catalog_has_the_curated_models_their_4bit_variants_and_the_demo(entries):
    by_hub = {e.hub_id: e for e in entries if e.hub_id}
    for hub_id in REQUIRED:
        assert hub_id in by_hub, hub_id
        name = hub_id.split("/")[1]
        q = by_hub.get(f"mlx-community/{name}-4bit")
        assert q is not None and q.quantized and q.quantization == {"bits": 4, "group_size": 64}
        assert q.base == by_hub[hub_id].key and q.family == by_hub[hub_id].family
    demo = catalog.get_entry("demo", entries)
    assert demo is not None and demo.is_local and demo.local_path.is_dir() and demo.hub_id is None
    assert len({e.key for e in entries}) == len(entries)


def test_every_entry_has_the_fields_a_user_needs(entries):
    from core.export.gguf import ARCHITECTURES

    for e in entries:
        assert e.name and e.family and e.licence and e.chat_format, e.key
        assert e.architecture in ARCHITECTURES, e.key
        assert e.params > 0 and e.download_bytes > 0 and e.train_memory_bytes > 0, e.key
        assert e.raw["train_memory_preset"] == DEFAULT_PRESET
        if e.hub_id:
            assert e.revision, e.key
            assert e.revision_note, e.key


def test_revisions_are_pinned_where_known_and_marked_where_not(entries):
    for e in entries:
        if not e.hub_id:
            continue
        if e.hub_id in PINNED:
            assert e.revision == PINNED[e.hub_id] and e.revision_note.startswith("pinned")
        else:
            assert e.revision == "main" and e.revision_note.startswith("not pinned"), e.key


def test_memory_estimates_are_core_train_estimates_from_the_real_configs(entries):
    raw = json.loads(catalog.catalog_path().read_text())
    assert raw["memory_preset"] == DEFAULT_PRESET
    stale = "stale estimate: run `python -m core.catalog --refresh-estimates`"
    for e in entries:
        weight_bytes = e.raw["weight_bytes"]
        assert e.train_memory_bytes == train_memory_estimate(e.config, DEFAULT_PRESET, weight_bytes=weight_bytes), stale
        assert e.train_memory_bytes == train_memory_estimate(e)
        base = e.base and catalog.get_entry(e.base, entries)
        ref = REFERENCE.get(e.hub_id) or (REFERENCE.get(base.hub_id) if base else None)
        if ref is None or not (ref / "config.json").is_file():
            continue
        real = json.loads((ref / "config.json").read_text())
        for k, v in e.config.items():
            assert real.get(k) == v, (e.key, k)
        assert e.params == catalog.param_count(real)


def test_refresh_estimates_rewrites_only_the_estimates(tmp_path):
    copy = tmp_path / "catalog.json"
    original = json.loads(catalog.catalog_path().read_text())
    broken = json.loads(json.dumps(original))
    broken["models"][0]["train_memory_bytes"] = 1
    copy.write_text(json.dumps(broken))
    assert catalog.refresh_estimates(copy) == 1
    assert json.loads(copy.read_text()) == original


def test_published_parameter_counts():
    # the counts the model cards publish
    real = {"Qwen2.5-0.5B-Instruct": 494_032_768, "TinyLlama-1.1B-Chat-v1.0": 1_100_048_384}
    for name, n in real.items():
        assert catalog.param_count(json.loads((MODELS_DIR / name / "config.json").read_text())) == n


def test_bigger_presets_need_more_memory(entries):
    e = catalog.get_entry("Qwen/Qwen2.5-0.5B-Instruct", entries)
    quick, balanced = train_memory_estimate(e, "quick"), train_memory_estimate(e, "balanced")
    assert balanced > quick
    q4 = catalog.get_entry("mlx-community/Qwen2.5-0.5B-Instruct-4bit", entries)
    assert q4.train_memory_bytes < e.train_memory_bytes and q4.download_bytes < e.download_bytes / 3


def test_demo_entry_matches_the_bundled_folder(entries):
    from core.hub import validate_model_dir

    demo = catalog.get_entry("demo", entries)
    folder = demo.local_path
    assert demo.params == json.loads((folder.parent / "BUILD.json").read_text())["params"]
    assert demo.download_bytes == sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert validate_model_dir(folder).ok
    assert catalog.is_downloaded(demo) and catalog.model_dir(demo) == folder


def test_fits_compares_with_this_machines_memory(entries):
    e = catalog.get_entry("qwen2.5-1.5b-instruct", entries)
    ok, why = fits(e, memory_bytes=8 * GB)
    assert not ok and "8.0 GB" in why and "4-bit" in why
    ok, why = fits(e, memory_bytes=64 * GB)
    assert ok and why.startswith("fits:")
    ok, why = fits(e, memory_bytes=int(e.train_memory_bytes / 0.75))
    assert ok and "tightly" in why
    ok, why = fits(catalog.get_entry("demo", entries))  # this machine
    assert ok
    assert fits(e, memory_bytes=64 * GB, preset="thorough")[1] != why


def test_machine_memory_uses_sysctl_on_a_mac(monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="17179869184\n", stderr="")

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(catalog.subprocess, "run", fake_run)
    assert catalog.machine_memory_bytes() == 16 * GB
    assert calls == [["sysctl", "-n", "hw.memsize"]]
    monkeypatch.setattr(sys, "platform", "linux")
    assert catalog.machine_memory_bytes() > 0


def test_downloaded_means_complete_in_the_hf_cache(entries, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    pinned = catalog.get_entry("Qwen/Qwen3-0.6B", entries)
    unpinned = catalog.get_entry("mlx-community/Qwen3-0.6B-4bit", entries)
    assert not catalog.is_downloaded(pinned) and not catalog.is_downloaded(unpinned)

    def put(hub_id, commit, files):
        snap = tmp_path / "hub" / ("models--" + hub_id.replace("/", "--")) / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in files:
            (snap / f).write_text("{}")
        return snap

    put(pinned.hub_id, pinned.revision, ["config.json", "tokenizer.json"])
    assert not catalog.is_downloaded(pinned)  # no weights yet
    (tmp_path / "hub" / "models--Qwen--Qwen3-0.6B" / "snapshots" / pinned.revision / "model.safetensors").write_text("")
    assert catalog.is_downloaded(pinned)
    commit = "a" * 40
    put(unpinned.hub_id, commit, ["config.json", "tokenizer.json", "model.safetensors"])
    assert not catalog.is_downloaded(unpinned)  # no refs/main yet
    ref = tmp_path / "hub" / "models--mlx-community--Qwen3-0.6B-4bit" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text(commit)
    assert catalog.is_downloaded(unpinned)


def test_models_main_prints_the_table(entries, tmp_path, monkeypatch, capsys):
    from app.hub_cli import models_main

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert models_main() == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["MODEL", "PARAMS", "DOWNLOAD", "TRAIN"]
    for e in entries:
        row = next(line for line in lines if line.startswith(e.key + " "))
        assert ("(bundled)" in row) == e.is_local
        if e.hub_id:
            assert e.hub_id in row
    demo_row = next(line for line in lines if line.startswith("demo "))
    assert demo_row.split()[5] == "yes"  # HERE: bundled
    assert str(tmp_path / "hub") in out
