"""Export targets beside the merged GGUF: MLX folders, the PEFT adapter, the model card, LM Studio, Hub push.

MLX folders are loaded back with mlx-lm and their logits compared with Tuneloom's model (base + adapter).
The PEFT file is checked numerically: W + (lora_alpha / r) * B @ A computed in numpy from it equals the
weights Tuneloom's fuse writes. LM Studio gets a fake home folder and a stand-in ``lms``; the push goes to
the hub look-alike on 127.0.0.1 (tests/fixtures/hub_server.py).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import mlx.core as mx  # noqa: F401

from core.events import RecordingEvents, TuneloomError
from tests.fixtures.ship_runs import make_run, tuned_logits
from tests.fixtures.tiny_models import cached_tiny_model

PROMPTS = ["Hello world, how are you today? I am fine, thank you.",
           "<|im_start|>user\nWrite code:\n    x = 1<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOM_HOME", str(tmp_path / "home"))


def _base(tmp_path_factory, name="qwen2.5", dtype="float32") -> Path:
    return cached_tiny_model(name, tmp_path_factory.getbasetemp() / "tiny-models", dtype=dtype)


def _mlx_logits(path, prompts=PROMPTS, adapter=None) -> np.ndarray:
    import mlx_lm

    model, tok = mlx_lm.load(str(path), adapter_path=str(adapter) if adapter else None)
    return np.concatenate([np.array(model(mx.array([tok.encode(p)]))[0].astype(mx.float32)) for p in prompts])


# --------------------------------------------------------------------------- MLX

def test_mlx_folders_load_in_mlx_lm_with_the_fine_tunes_logits(tmp_path, tmp_path_factory):
    base = _base(tmp_path_factory)
    run = make_run(base, tmp_path / "run")
    want = tuned_logits(base, run, PROMPTS)
    plain = _mlx_logits(base)
    assert np.abs(want - plain).max() > 1.0, "the adapter must change the model for this test to mean anything"

    res = __import__("core.export.mlx", fromlist=["x"]).export_mlx(run, tmp_path / "mlx", bits=16)
    merged, adapter = Path(res["merged"]), Path(res["adapter"])
    cfg = json.loads((merged / "config.json").read_text())
    assert "quantization" not in cfg and (merged / "model.safetensors").is_file()
    assert (merged / "tokenizer_config.json").is_file() and (merged / "README.md").read_text().startswith("---\n")
    # float16 weights: relative rounding 2^-11 per weight
    got = _mlx_logits(merged)
    assert np.abs(got - want).max() < 0.05, np.abs(got - want).max()
    # the adapter folder on the original base: exactly Tuneloom's model
    got = _mlx_logits(base, adapter=adapter)
    assert np.abs(got - want).max() < 1e-4
    assert set(p.name for p in adapter.iterdir()) == {"adapters.safetensors", "adapter_config.json", "README.md"}


@pytest.mark.parametrize("bits", [8, 4])
def test_mlx_quantized_folder(tmp_path, tmp_path_factory, bits):
    base = _base(tmp_path_factory)
    run = make_run(base, tmp_path / "run")
    want = tuned_logits(base, run, PROMPTS)
    plain = _mlx_logits(base)
    from core.export.mlx import export_mlx

    res = export_mlx(run, tmp_path / "mlx", bits=bits, adapter=False)
    cfg = json.loads((Path(res["merged"]) / "config.json").read_text())
    assert cfg["quantization"]["bits"] == bits and cfg["quantization"]["group_size"] == 64
    got = _mlx_logits(res["merged"])
    err, effect = np.abs(got - want).mean(), np.abs(want - plain).mean()
    if bits == 8:
        # measured: mean error 0.047 against an adapter effect of 0.79; every top token kept
        assert err < 0.15 * effect, (err, effect)
        assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9
    else:
        # 4 bits over 64-wide rows of random weights is coarse (measured 0.72 against 0.79), but the
        # quantized model is still the fine-tune's, not the base's (measured 1.10 from the base)
        assert err < np.abs(got - plain).mean(), (err, np.abs(got - plain).mean())


def test_mlx_refuses_a_folder_it_did_not_write(tmp_path, tmp_path_factory):
    base = _base(tmp_path_factory)
    run = make_run(base, tmp_path / "run")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    from core.export.mlx import export_mlx

    with pytest.raises(TuneloomError, match="not written by Tuneloom"):
        export_mlx(run, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- PEFT

@pytest.mark.parametrize("model", ["qwen2.5", "tinyllama"])
def test_peft_folder_names_shapes_and_scale(tmp_path, tmp_path_factory, model):
    from safetensors.numpy import load_file

    from core.export.fuse import fuse_model
    from core.export.peft import export_peft

    base = _base(tmp_path_factory, model)
    run = make_run(base, tmp_path / "run", lora={"rank": 4, "scale": 2.5, "dropout": 0.0})
    res = export_peft(run, tmp_path / "peft")
    folder = Path(res["path"])
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["r"] == 4 and cfg["lora_alpha"] == pytest.approx(10.0) and cfg["use_dora"] is False
    assert cfg["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj"])
    assert cfg["base_model_name_or_path"] == str(base)
    assert cfg["layers_to_transform"] is None  # both layers of the tiny model are adapted

    state = load_file(str(folder / "adapter_model.safetensors"))
    a = state["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = state["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert a.shape == (4, 64) and b.shape == (64, 4)
    assert state["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].shape == (4, 128)
    assert all(k.startswith("base_model.model.model.layers.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
               for k in state)

    # W + (lora_alpha / r) * B @ A, from the PEFT file alone, equals Tuneloom's merged weights
    fused = load_file(str(fuse_model(base, run, tmp_path / "fused") / "model.safetensors"))
    orig = load_file(str(base / "model.safetensors"))
    scaling = cfg["lora_alpha"] / cfg["r"]
    checked = 0
    for key in state:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len("base_model.model."):-len(".lora_A.weight")]
        A, B = state[key], state[key.replace("lora_A", "lora_B")]
        w = orig[module + ".weight"].astype(np.float32) + scaling * (B @ A)
        np.testing.assert_allclose(w, fused[module + ".weight"].astype(np.float32), atol=1e-5, rtol=1e-5)
        checked += 1
    assert checked == 14

    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and 'library_name: "peft"' in card and "## Training curve" in card
    assert "PeftModel.from_pretrained" in card


def test_peft_dora_magnitude_gives_the_merged_weights(tmp_path, tmp_path_factory):
    """PEFT's DoRA: W' = m / ||W + s B A||_row * (W + s B A), as mlx-lm's DoRALinear computes and fuses."""
    from safetensors.numpy import load_file

    from core.export.fuse import fuse_model
    from core.export.peft import export_peft

    base = _base(tmp_path_factory)
    run = make_run(base, tmp_path / "run", kind="dora")
    folder = Path(export_peft(run, tmp_path / "peft")["path"])
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["use_dora"] is True
    state = load_file(str(folder / "adapter_model.safetensors"))
    fused = load_file(str(fuse_model(base, run, tmp_path / "fused") / "model.safetensors"))
    orig = load_file(str(base / "model.safetensors"))
    scaling = cfg["lora_alpha"] / cfg["r"]
    mags = [k for k in state if k.endswith(".lora_magnitude_vector")]
    assert len(mags) == 14
    for key in mags:
        module = key[len("base_model.model."):-len(".lora_magnitude_vector")]
        A, B = state[f"base_model.model.{module}.lora_A.weight"], state[f"base_model.model.{module}.lora_B.weight"]
        w = orig[module + ".weight"].astype(np.float32) + scaling * (B @ A)
        w = (state[key] / np.linalg.norm(w, axis=1))[:, None] * w
        np.testing.assert_allclose(w, fused[module + ".weight"].astype(np.float32), atol=1e-5, rtol=1e-4)


def test_peft_refuses_a_qlora_base(tmp_path, tmp_path_factory):
    import shutil

    from core.export.peft import peft_tensors

    base = _base(tmp_path_factory)
    qbase = tmp_path / "qbase"
    shutil.copytree(base, qbase)
    cfg = json.loads((qbase / "config.json").read_text())
    cfg["quantization"] = {"group_size": 64, "bits": 4}
    (qbase / "config.json").write_text(json.dumps(cfg))
    run = make_run(base, tmp_path / "run")
    with pytest.raises(TuneloomError, match="QLoRA"):
        peft_tensors(qbase, run)


def test_hub_id_from_the_cache_path():
    from core.export.peft import hub_id_of

    assert hub_id_of("/h/hub/models--Qwen--Qwen2.5-0.5B-Instruct/snapshots/abc123") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub_id_of("/some/local/folder") is None


# --------------------------------------------------------------------------- model card

def test_model_card_front_matter_and_body(tmp_path, tmp_path_factory):
    import shutil

    import yaml

    from core.export.model_card import card_text

    base = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "abc"
    shutil.copytree(_base(tmp_path_factory), base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# Qwen\n")
    run = make_run(base, tmp_path / "run")
    (run / "report.json").write_text(json.dumps({
        "evaluation": {"base": {"exact_match": 0.1}, "tuned": {"exact_match": 0.8}},
        "forgetting": {"kept": 0.95}}))
    text = card_text(run, base, "peft", repo="me/tuned")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct" and front["license"] == "apache-2.0"
    assert front["library_name"] == "peft" and "lora" in front["tags"] and "tuneloom" in front["tags"]
    assert "pokemon.jsonl" in text and "| rank | 4 |" in text and "| 20 | 1.0000 | 1.3000 |" in text
    assert "| exact_match | 0.1 | 0.8 |" in text and "Forgetting check" in text
    assert 'PeftModel.from_pretrained(base, "me/tuned")' in text


# --------------------------------------------------------------------------- LM Studio

def test_lmstudio_places_the_gguf_under_a_fake_home(tmp_path, monkeypatch):
    from core.export.lmstudio import place_gguf

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    gguf = tmp_path / "out" / "tuned-q4_k_m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\1" * 100)
    before = {p for p in tmp_path.rglob("*")}
    res = place_gguf(gguf, "my run")
    dest = home / ".lmstudio" / "models" / "tuneloom" / "my-run" / "tuned-q4_k_m.gguf"
    assert res["path"] == str(dest) and dest.read_bytes() == gguf.read_bytes()
    new = {p for p in tmp_path.rglob("*")} - before
    # the GGUF and the marker that says Tuneloom wrote its folder (core.export.target), nothing else
    assert {p for p in new if not p.is_dir()} == {dest, dest.parent / ".tuneloom"}
    assert all(p in dest.parents for p in new if p.is_dir()), new
    with pytest.raises(TuneloomError, match="already has"):
        place_gguf(gguf, "my run")

    # a downloadsFolder set in LM Studio's settings wins
    (home / ".lmstudio" / "settings.json").write_text(json.dumps({"downloadsFolder": str(tmp_path / "lm-models")}))
    res = place_gguf(gguf, "other")
    assert res["path"] == str(tmp_path / "lm-models" / "tuneloom" / "other" / "tuned-q4_k_m.gguf")


def test_lmstudio_uses_lms_import_when_installed(tmp_path, monkeypatch):
    from core.export.lmstudio import place_gguf

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "lms-args.json"
    lms = bin_dir / "lms"
    # a stand-in for LM Studio's CLI: records its arguments and copies as `lms import --copy` does
    lms.write_text(f"""#!/bin/sh
python3 - "$@" <<'PY'
import json, os, shutil, sys
args = sys.argv[1:]
json.dump(args, open({str(log)!r}, "w"))
user_repo = args[args.index("--user-repo") + 1]
dest = os.path.join(os.environ["HOME"], ".lmstudio", "models", user_repo)
os.makedirs(dest, exist_ok=True)
shutil.copyfile(args[1], os.path.join(dest, os.path.basename(args[1])))
PY
""")
    lms.chmod(lms.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    gguf = tmp_path / "tuned.gguf"
    gguf.write_bytes(b"GGUF" + b"\2" * 50)
    res = place_gguf(gguf, "run-1")
    assert res["method"] == "lms import"
    assert json.loads(log.read_text()) == ["import", str(gguf), "--yes", "--user-repo", "tuneloom/run-1", "--copy"]
    assert Path(res["path"]).read_bytes() == gguf.read_bytes() and gguf.is_file(), "copied, not moved"


# --------------------------------------------------------------------------- push

TOKEN = "hf_write_token_for_the_local_server"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from tests.fixtures.hub_server import HubServer, use_hub_server

    with HubServer(lifetime=1800) as srv:
        srv.write_tokens.add(TOKEN)
        use_hub_server(srv, tmp_path / "hf-home", monkeypatch)
        (tmp_path / "hf-home").mkdir(exist_ok=True)
        yield srv


def test_push_without_a_token_says_how_to_log_in(tmp_path, tmp_path_factory, hub):
    from core.export.hub_push import NotLoggedIn, push

    run = make_run(_base(tmp_path_factory), tmp_path / "run")
    with pytest.raises(NotLoggedIn) as err:
        push(run, "me/tuned", endpoint=hub.url)
    assert "log in with `hf auth login` or paste a token" in err.value.user_message()
    assert not [r for r in hub.requests if r.method == "POST"], "nothing sent"


def test_push_adapter_and_merged_in_one_commit(tmp_path, tmp_path_factory, hub, monkeypatch):
    from huggingface_hub import constants

    from app.cli import main

    run = make_run(_base(tmp_path_factory), tmp_path / "run")
    Path(constants.HF_TOKEN_PATH).write_text(TOKEN)  # as `hf auth login` stores it
    before = {p: p.stat().st_mtime_ns for p in Path(constants.HF_TOKEN_PATH).parent.rglob("*") if p.is_file()}
    ev = RecordingEvents()
    from core.export.hub_push import push

    res = push(run, "me/tuned", what=["adapter", "merged"], private=True, endpoint=hub.url, events=ev)
    assert res["url"] == f"{hub.url}/me/tuned" and hub.private["me/tuned"] is True
    (commit,) = hub.commits
    files = set(hub.repos["me/tuned"].files)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "merged/config.json",
            "merged/model.safetensors", "merged/README.md"} <= files
    assert commit["oid"] == res["commit"] and set(commit["files"]) == files
    assert hub.validated and hub.validated[0].startswith("---\n"), "the model card's metadata passed the Hub's check"
    # progress reaches the total in bytes
    assert ev.progresses and ev.progresses[-1][0] == ev.progresses[-1][1] == res["bytes"]
    # the token is read, never written
    after = {p: p.stat().st_mtime_ns for p in Path(constants.HF_TOKEN_PATH).parent.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p in before} == before

    # again, to an existing repo, through the CLI
    assert main(["push", str(run), "--repo", "me/tuned", "--json"]) == 0


def test_push_cancel_leaves_the_repo_without_a_commit(tmp_path, tmp_path_factory, hub):
    from huggingface_hub import constants

    from core.events import CancelToken, Cancelled, Events
    from core.export.hub_push import push

    run = make_run(_base(tmp_path_factory), tmp_path / "run")
    Path(constants.HF_TOKEN_PATH).write_text(TOKEN)
    cancel = CancelToken()

    class CancelOnFirstUpload(Events):
        def progress(self, done, total, what=""):
            if str(what).startswith("uploaded"):
                cancel.cancel()

    with pytest.raises(Cancelled):
        push(run, "me/cancelled", endpoint=hub.url, events=CancelOnFirstUpload(), cancel=cancel)
    assert hub.commits == [] and hub.repos["me/cancelled"].files == {}


# --------------------------------------------------------------------------- CLI

def test_cli_export_targets_print_their_paths(tmp_path, tmp_path_factory, monkeypatch, capsys):
    from app.cli import main

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", str(tmp_path / "no-lms"))  # no `lms`: the file is placed by Tuneloom itself
    run = make_run(_base(tmp_path_factory), tmp_path / "run")
    assert main(["export", str(run), "--lmstudio", "--quant", "q8_0", "--peft", str(tmp_path / "peft"),
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lm = home / ".lmstudio" / "models" / "tuneloom" / "run" / "run-q8_0.gguf"
    assert got["lmstudio"] == got["gguf"] == str(lm) and lm.read_bytes()[:4] == b"GGUF"
    assert got["peft"] == str(tmp_path / "peft") and (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    # without --json: one "what: path" line each
    assert main(["export", str(run), "--peft", str(tmp_path / "peft")]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [f"peft: {tmp_path / 'peft'}"]
    # LM Studio opens merged files, not adapters
    assert main(["export", str(run), "--adapter-only", "--gguf", str(tmp_path / "a.gguf"), "--lmstudio"]) == 2


# slow (about a minute: torch + transformers + peft load in another interpreter) and needs that interpreter,
# so it runs only where TUNELOOM_PEFT_PYTHON names one (python -m venv V; V/bin/pip install torch transformers peft)
@pytest.mark.skipif(not os.environ.get("TUNELOOM_PEFT_PYTHON"),
                    reason="set TUNELOOM_PEFT_PYTHON to a python with torch, transformers and peft")
@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_peft_folder_loads_in_real_peft_with_the_same_logits(tmp_path, kind):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    subprocess.run([sys.executable, str(root / "bench" / "peft_check.py"), "export", str(tmp_path), kind],
                   check=True, env=env, capture_output=True)
    p = subprocess.run([os.environ["TUNELOOM_PEFT_PYTHON"], str(root / "bench" / "peft_check.py"), "compare",
                        str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_targets_take_the_best_adapter_as_try_and_the_merged_export_do(tmp_path, tmp_path_factory):
    """A run whose best adapter (lowest validation loss) is not its last: the PEFT folder, the MLX adapter
    folder and the GGUF adapter hold the best one by default and the last one with final=True."""
    import shutil

    from safetensors.numpy import load_file

    from core.export.adapter import read_adapter
    from core.export.peft import peft_tensors

    base = _base(tmp_path_factory)
    best = make_run(base, tmp_path / "best", seed=1)
    run = make_run(base, tmp_path / "run", seed=2)
    shutil.copyfile(best / "adapters.safetensors", run / "adapters_best.safetensors")
    key = "model.layers.0.self_attn.q_proj"
    mlx_best = load_file(str(best / "adapters.safetensors"))[key + ".lora_b"]
    mlx_last = load_file(str(run / "adapters.safetensors"))[key + ".lora_b"]
    assert not np.allclose(mlx_best, mlx_last)
    for final, want in ((False, mlx_best), (True, mlx_last)):
        state, _ = peft_tensors(base, run, final)
        np.testing.assert_array_equal(state[f"base_model.model.{key}.lora_B.weight"], want.T)
        ad = read_adapter(base, run, final)
        q = next(B for name, _A, B in ad.tensors if name == "blk.0.attn_q.weight")
        np.testing.assert_array_equal(q, want.T)
    from core.export.mlx import export_mlx

    res = export_mlx(run, tmp_path / "mlx", merged=False)
    np.testing.assert_array_equal(load_file(str(Path(res["adapter"]) / "adapters.safetensors"))[key + ".lora_b"],
                                  mlx_best)
