"""Model folders as the hub, transformers 5 and mlx-lm write them, through the whole pipeline (issue 21).

Each layout of tests/fixtures/layouts.py (template inline or in chat_template.jinja,
sharded safetensors with an index, mlx-lm 4-bit / 8-bit / mixed-precision quantized
bases, bfloat16 and float16 weights) on a tiny real-tokenizer model is validated,
trained for 4 steps, exported to F16 and Q4_K_M, and then: llama.cpp's logits on the F16
file equal mlx-lm's base + adapter wherever the top-1 margin is clear, the Q4_K_M file
loads and tracks them, the Modelfile's TEMPLATE (through Go's text/template) and the
GGUF's embedded template give the training prompt token for token, and registration
against the recording Ollama server sends that template. A failing export (no template,
disk full, cancel) leaves no file behind.
"""
from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

import mlx.core as mx  # noqa: E402
import mlx_lm  # noqa: E402

from core import chat_templates as ct  # noqa: E402
from core.events import CallbackEvents, Cancelled, CancelToken, TuneloomError  # noqa: E402
from core.export.pipeline import export  # noqa: E402
from core.hub import validate_model_dir  # noqa: E402
from core.model_folder import read_tokenizer_info  # noqa: E402
from core.tokens import ChatEncoder  # noqa: E402
from core.train import TrainConfig, train  # noqa: E402
from fixtures.layouts import cached_layout  # noqa: E402
from tests.fixtures.ollama_server import FakeOllama  # noqa: E402

# (layout, family): every layout once, the families spread over them
# (Qwen's 151k-token vocabulary makes each of its exports ~20 s here, so it takes the two layouts the
# issue names: the mlx-community-style 4-bit base and transformers 5's chat_template.jinja)
CASES = [("inline", "tinyllama"), ("jinja", "qwen3"), ("sharded", "tinyllama"), ("q4", "qwen2.5"),
         ("q8", "tinyllama"), ("mixed", "tinyllama"), ("f16", "tinyllama")]
IDS = [f"{layout}-{family}" for layout, family in CASES]
# each run is exported twice (F16, Q4_K_M) through a fused copy of its base: its tokenizer is read once
pytestmark = pytest.mark.usefixtures("shared_vocab")
F16_LOGIT_ATOL = 0.05  # as tests/test_gguf_export.py: llama.cpp's f16 arithmetic against MLX in float32
# A quantized (QLoRA) base is dequantized and merged into the base's float dtype (bfloat16 here) by
# core.export.fuse, while mlx-lm computes base + adapter from the packed weights in float32: the rounding of
# every merged weight to bfloat16 (2^-9) moves the tiny random models' logits by up to ~0.3 (measured
# 0.29 max, 0.036 mean on q8), so a top-1 margin is clear above twice that.
QUANT_LOGIT_ATOL = 0.3

CHATS = [
    [{"role": "user", "content": "Describe the red fox."}, {"role": "assistant", "content": '{"name": "red fox"}'}],
    [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "The blue whale?"},
     {"role": "assistant", "content": '{"name": "blue whale", "tags": ["sea"]}'}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Grüße 世界 🎉?"}, {"role": "assistant", "content": "Très bien ✓"}],
    [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "one, two, three"}],
]
PROMPTS = [
    [{"role": "user", "content": "Describe the green owl."}],
    [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "{}"}, {"role": "user", "content": "The grey wolf, ünïcödé 🐺?"}],
]


def layout_dir(tmp_path_factory, layout: str, family: str) -> Path:
    return cached_layout(layout, family, tmp_path_factory.getbasetemp() / "layouts")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("layout-data") / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in CHATS * 3),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def go_renderer():
    from tests.go.gorender import GoRenderer, GoUnavailable, build_renderer

    try:
        binary = build_renderer()
    except GoUnavailable:
        yield None  # the Python mirror of the Go template is used instead
        return
    renderer = GoRenderer(binary)
    yield renderer
    renderer.close()


def train_run(base: Path, data: Path, out: Path) -> Path:
    cfg = TrainConfig(model=str(base), data=[str(data)], out=str(out), iters=4, rank=4, alpha=16.0, lr=2e-3,
                      batch=2, max_seq_len=128, warmup=0, valid_every=0, checkpoint_every=100, seed=0)
    return Path(train(cfg)["run_dir"])


def read_modelfile(text: str) -> dict:
    """FROM, TEMPLATE and the stops of a Modelfile, read as Ollama's parser reads what Tuneloom writes."""
    out: dict = {"stops": []}
    for m in re.finditer(r'^(\w+) ("""(.*?)"""|"([^"\n]*)"|(\S+))( ([^\n]*))?$', text, re.S | re.M):
        value = next(g for g in (m.group(3), m.group(4), m.group(5)) if g is not None)
        if m.group(1) == "PARAMETER":
            if value == "stop":
                out["stops"].append(m.group(7)[1:-1] if m.group(7).startswith('"') else m.group(7))
        else:
            out[m.group(1)] = value
    return out


def load_llama(path: Path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2, seed=0)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def mlx_logits(base: Path, run: Path | None, token_lists: list[list[int]]) -> np.ndarray:
    model, _ = mlx_lm.load(str(base), adapter_path=str(run) if run else None)
    model.set_dtype(mx.float32)
    return np.concatenate([np.array(model(mx.array([ids]))[0].astype(mx.float32)) for ids in token_lists])


# --------------------------------------------------------------------------- the reader

@pytest.mark.parametrize("layout, family", CASES, ids=IDS)
def test_reader_and_validation_see_the_template_transformers_loads(tmp_path_factory, layout, family):
    from transformers import AutoTokenizer

    folder = layout_dir(tmp_path_factory, layout, family)
    info = read_tokenizer_info(folder)
    assert info.has_chat_template
    assert info.chat_template == AutoTokenizer.from_pretrained(str(folder)).chat_template
    if layout == "jinja":
        assert info.source == "chat_template.jinja"
        assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text())
    check = validate_model_dir(folder)
    assert check.ok, check.problems
    assert check.chat_template_source == info.describe_source()
    assert check.as_dict()["chat_template_source"] == info.describe_source()
    if layout == "sharded":
        assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("*.safetensors"))) > 1
    if layout in ("q4", "q8", "mixed"):
        assert check.quantization["bits"] == (8 if layout == "q8" else 4)
    if layout == "mixed":
        quant = json.loads((folder / "config.json").read_text())["quantization"]
        assert {v["bits"] for v in quant.values() if isinstance(v, dict)} == {4, 8}


# --------------------------------------------------------------------------- the pipeline

@pytest.mark.parametrize("layout, family", CASES, ids=IDS)
def test_train_export_and_register(tmp_path_factory, tmp_path, monkeypatch, data_file, go_renderer, layout, family):
    base = layout_dir(tmp_path_factory, layout, family)
    run = train_run(base, data_file, tmp_path / "run")
    out = tmp_path / "out"

    with FakeOllama() as server:
        monkeypatch.setenv("OLLAMA_HOST", server.url)
        res = export(run, gguf=out / "model-f16.gguf", quant="f16", ollama=f"tuned-{layout}")
        assert server.problems == []
    assert sorted(p.name for p in out.iterdir()) == ["model-f16.Modelfile", "model-f16.gguf"], "no temporary file left"
    res4 = export(run, gguf=out / "q4" / "model-q4_k_m.gguf", quant="q4_k_m")
    assert sorted(p.name for p in (out / "q4").iterdir()) == ["model-q4_k_m.Modelfile", "model-q4_k_m.gguf"]
    assert res["chat_template_source"] == read_tokenizer_info(base).describe_source()

    enc = ChatEncoder(base)
    ids = [enc.prompt_ids(p) for p in PROMPTS] + [enc.encode(c).ids for c in CHATS[:2]]
    ref = mlx_logits(base, run, ids)

    # F16: llama.cpp equals mlx-lm base + adapter wherever the top-1 margin is clear
    llm = load_llama(out / "model-f16.gguf")
    try:
        got = np.concatenate([llama_logits(llm, t) for t in ids])
        atol = QUANT_LOGIT_ATOL if layout in ("q4", "q8", "mixed") else F16_LOGIT_ATOL
        top2 = np.sort(ref, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * atol
        assert clear.mean() > 0.35, f"too few clear positions ({clear.mean():.0%}) for the test to mean anything"
        assert np.array_equal(got.argmax(-1)[clear], ref.argmax(-1)[clear])
        err = np.abs(got - ref)
        assert err.mean() < atol / 2, f"mean logit error {err.mean():.3f}"
        base_only = mlx_logits(base, None, ids)
        assert np.abs(base_only - ref).mean() > 10 * err.mean(), "the 4 training steps changed the model"

        # the prompt: Modelfile TEMPLATE (Go) == embedded template (Jinja, as llama-server renders it)
        # == training, as text and as llama.cpp's tokens
        mf = read_modelfile((out / "model-f16.Modelfile").read_text(encoding="utf-8"))  # one per GGUF
        assert mf["FROM"] == "./model-f16.gguf"
        embedded = llm.metadata["tokenizer.chat_template"]
        assert ct.chat_template_capabilities(embedded) == set()
        tokens = ct.special_tokens(read_tokenizer_info(base).config)
        for messages in PROMPTS:
            want = enc.render(messages, add_generation_prompt=True)
            go = go_renderer.render(mf["TEMPLATE"], messages) if go_renderer else \
                ct.chat_format_for(read_tokenizer_info(base).config).render(messages)
            native = ct._compiled(embedded).render(messages=ct.llama_server_messages(messages),
                                                   add_generation_prompt=True, enable_thinking=True, **tokens)
            assert go == want and native == want
            assert llm.tokenize(go.encode(), add_bos=enc.add_bos, special=True) == enc.prompt_ids(messages)
    finally:
        llm.close()

    # Q4_K_M loads and tracks the reference
    q4 = load_llama(Path(res4["gguf"]))
    try:
        got4 = np.concatenate([llama_logits(q4, t) for t in ids])
    finally:
        q4.close()
    corr = np.array([np.corrcoef(g, r)[0, 1] for g, r in zip(got4, ref)])
    assert np.isfinite(got4).all() and corr.mean() > 0.9, corr.mean()

    # registration sent the GGUF and the Modelfile's template and stops
    create = [r for r in server.calls("POST", "/api/create")][-1].json
    digest = "sha256:" + hashlib.sha256((out / "model-f16.gguf").read_bytes()).hexdigest()
    assert list(create["files"].values()) == [digest]
    assert create["template"] == mf["TEMPLATE"] and create["parameters"]["stop"] == mf["stops"]
    assert res["ollama"]["model"] == f"tuned-{layout}:latest"


# --------------------------------------------------------------------------- failures leave nothing

@pytest.fixture(scope="module")
def small_run(tmp_path_factory, data_file) -> Path:
    base = layout_dir(tmp_path_factory, "q8", "tinyllama")  # a QLoRA run: fusing dequantizes
    return train_run(base, data_file, tmp_path_factory.mktemp("small-run") / "run")


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_no_template_leaves_nothing(tmp_path, tmp_path_factory, monkeypatch):
    base = tmp_path / "no-template"
    shutil.copytree(layout_dir(tmp_path_factory, "jinja", "qwen3"), base)
    (base / "chat_template.jinja").unlink()
    fused = []
    monkeypatch.setattr("core.export.fuse.fuse_model", lambda *a, **k: fused.append(1))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ct.TemplateNotSupported, match="no chat template") as err:
        export(base, gguf=out / "m.gguf")
    assert "chat_template.jinja" in str(err.value) and err.value.hint
    assert _leftovers(out) == [] and fused == []


def test_disk_full_while_writing_the_gguf_leaves_nothing(tmp_path, small_run, monkeypatch):
    def full(self, fout):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("core.export.gguf._TensorStream.tofile", full)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TuneloomError, match="filled up") as err:
        export(small_run, gguf=out / "m.gguf")
    assert "space" in err.value.hint
    assert _leftovers(out) == []


def test_disk_full_while_writing_the_modelfile_leaves_nothing(tmp_path, small_run, monkeypatch):
    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("core.export.pipeline._write_file", full)
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.gguf").write_bytes(b"GGUF an earlier export")
    with pytest.raises(TuneloomError, match="filled up"):
        export(small_run, gguf=out / "m.gguf", replace_files=True)  # replacing an earlier GGUF is asked for
    assert _leftovers(out) == ["m.gguf"] and (out / "m.gguf").read_bytes() == b"GGUF an earlier export"


def test_not_enough_space_is_refused_before_fusing(tmp_path, small_run, monkeypatch):
    import shutil as _shutil

    real = _shutil.disk_usage
    monkeypatch.setattr("core.export.pipeline.shutil.disk_usage", lambda p: real(p)._replace(free=5 * 2**20))
    fused = []
    monkeypatch.setattr("core.export.fuse.fuse_model", lambda *a, **k: fused.append(1))
    out = tmp_path / "out"
    with pytest.raises(TuneloomError, match="Not enough disk space") as err:
        export(small_run, gguf=out / "m.gguf", quant="q8_0")
    assert "5.2 MB is free" in str(err.value) and fused == []  # sizes as core.units.fmt_bytes writes them
    assert _leftovers(out) == []


@pytest.mark.parametrize("when", ["fusing", "writing"])
def test_cancel_leaves_nothing(tmp_path, small_run, when):
    token = CancelToken()
    seen = []

    def on_progress(done, total, what):
        seen.append(what)
        if when == "fusing" or (when == "writing" and what.startswith(("token_embd", "blk", "output"))):
            token.cancel()

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Cancelled):
        export(small_run, gguf=out / "m.gguf", events=CallbackEvents(progress=on_progress), cancel=token)
    assert seen, "the export reported progress"
    assert _leftovers(out) == []


# --------------------------------------------------------------------------- Modelfile only

def test_modelfile_only_writes_only_the_modelfile(tmp_path, tmp_path_factory, small_run):
    from app.cli import main

    out = tmp_path / "out"
    records = sorted((small_run / "exports").glob("*.json"))
    rc = main(["export", str(small_run), "--modelfile", str(out / "Modelfile")])
    assert rc == 0
    assert _leftovers(out) == ["Modelfile"]
    assert sorted((small_run / "exports").glob("*.json")) == records  # no GGUF, nothing to record
    mf = read_modelfile((out / "Modelfile").read_text(encoding="utf-8"))
    expected = f"./{small_run.name}-f16.gguf"
    assert mf["FROM"] == expected
    # the GGUF it names is the one an export with --gguf there writes, with the same Modelfile
    text = (out / "Modelfile").read_text(encoding="utf-8")
    rc = main(["export", str(small_run), "--gguf", str(out / expected), "--modelfile", str(out / "Modelfile")])
    assert rc == 0 and (out / expected).is_file()
    assert (out / "Modelfile").read_text(encoding="utf-8") == text
    import stat

    from core import atomic

    for f in (out / expected, out / "Modelfile"):  # readable as any new file (not mkstemp's 0600)
        assert stat.S_IMODE(f.stat().st_mode) == atomic.new_mode(), f
    # recorded in the run, as the app's Export step records it: the History lists it
    from core import runs

    [rec] = [e for e in runs.RunInfo.load(small_run).exports if e.path == out / expected]
    assert rec.kind == "gguf" and rec.record["quant"] == "f16" and rec.size == (out / expected).stat().st_size
    assert main(["export", str(small_run)]) == 2


def test_cli_modelfile_system_is_the_trained_one_unless_told(tmp_path, tmp_path_factory, capsys):
    """`tuneloom export RUN` writes the system prompt the run was trained with as SYSTEM, as the Export page
    fills it in, so `ollama run` builds the training prompt; --system replaces it and --system "" drops it."""
    from app.cli import main

    base = layout_dir(tmp_path_factory, "jinja", "qwen3")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": str(base), "max_seq_len": 256,
                                                 "system_prompt": "You answer in JSON."}))
    (run / "adapter_config.json").write_text(json.dumps({"base_model": str(base), "fine_tune_type": "lora"}))
    (run / "adapters.safetensors").write_bytes(b"")
    cases = {(): "You answer in JSON.", ("--system", "Be brief."): "Be brief.", ("--system", ""): None}
    for extra, want in cases.items():
        mf_path = tmp_path / f"Modelfile{len(extra)}{want is None}"
        assert main(["export", str(run), "--modelfile", str(mf_path), *extra]) == 0
        assert read_modelfile(mf_path.read_text(encoding="utf-8")).get("SYSTEM") == want, extra
    assert "trained with" in capsys.readouterr().err


# --------------------------------------------------------------------------- a run trained on reasoning

@pytest.mark.parametrize("thinking", [True, False, None])
def test_run_thinking_flag_decides_both_templates(tmp_path, tmp_path_factory, thinking):
    """`"thinking": true` in the run's config.json (data with reasoning) gives a Modelfile TEMPLATE and an
    embedded template that both think; false or absent gives thinking off in both."""
    from core.export.pipeline import plan_export

    base = layout_dir(tmp_path_factory, "jinja", "qwen3")
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"model": str(base), "max_seq_len": 256}
    if thinking is not None:
        cfg["thinking"] = thinking
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "adapter_config.json").write_text(json.dumps({"base_model": str(base), "fine_tune_type": "lora"}))
    (run / "adapters.safetensors").write_bytes(b"")
    plan = plan_export(run, modelfile=tmp_path / "Modelfile")
    assert plan.thinking is bool(thinking)
    caps = ct.chat_template_capabilities(plan.embedded_template.template)
    go_caps = ct.go_template_capabilities(plan.chat_format.template)
    if thinking:
        assert plan.chat_format.kind == "qwen3-thinking" and caps == go_caps == {"thinking"}
    else:
        assert plan.chat_format.kind == "qwen3" and caps == go_caps == set()
    setup = ct.OllamaSetup(plan.chat_format.template, plan.embedded_template.template, architecture="qwen3")
    assert ct.default_think(setup) is (True if thinking else None)
    assert "PARAMETER num_ctx 256" in plan.modelfile_text
    assert list(tmp_path.iterdir()) == [run], "planning writes nothing"
