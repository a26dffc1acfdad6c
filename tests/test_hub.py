"""core.hub against a hub look-alike on 127.0.0.1 (tests/fixtures/hub_server.py), and model validation.

The served repository is a tiny Qwen2.5 built from the real Qwen2.5 tokenizer files
(tests/fixtures/tiny_models.py). HF_HOME is a fresh folder and HF_ENDPOINT the local
server in every test; nothing here reaches the internet.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest
from huggingface_hub import constants

from core import hub
from core.events import CancelToken, Cancelled, Events, RecordingEvents
from tests.fixtures.hub_server import HubServer, use_hub_server
from tests.fixtures.tiny_models import cached_tiny_model

REPO = "tiny/qwen"
GATED = "tiny/gated"
TOKEN = "hf_test_token_for_the_local_server"
EXTRA = {"LICENSE": b"Apache License 2.0 (test copy)\n", "README.md": b"# tiny qwen\n",
         "pytorch_model.bin": b"\0" * 4096, "onnx/model.onnx": b"onnx"}
NEEDED = {"LICENSE", "config.json", "generation_config.json", "merges.txt", "model.safetensors", "tokenizer.json",
          "tokenizer_config.json", "vocab.json"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return cached_tiny_model("qwen2.5", tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="module")
def server(tiny_dir):
    with HubServer(lifetime=1800) as srv:
        srv.add_repo(REPO, tiny_dir, files=EXTRA)
        srv.add_repo(GATED, tiny_dir, gated=True, token=TOKEN)
        yield srv


@pytest.fixture
def hub_env(server, tmp_path, monkeypatch) -> HubServer:
    """A fresh HF_HOME, HF_ENDPOINT on the local server, online, no token."""
    return use_hub_server(server, tmp_path / "hf-home", monkeypatch)


def _repo_dir(repo=REPO) -> Path:
    return hub.repo_cache_dir(repo)


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _blob_sha(tiny_dir, name="model.safetensors") -> str:
    return _sha256(tiny_dir / name)


# --------------------------------------------------------------------------- download

def test_full_download_fetches_only_needed_files_with_monotone_byte_progress(hub_env, tiny_dir):
    ev = RecordingEvents()
    res = hub.fetch_model(REPO, events=ev)

    assert set(res.files) == NEEDED
    snap = _repo_dir() / "snapshots" / res.commit
    assert res.path == snap
    for name in NEEDED - {"LICENSE"}:
        assert (snap / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    assert (snap / "LICENSE").read_bytes() == EXTRA["LICENSE"]
    # the huggingface_hub cache layout: snapshot entries link to blobs named by etag, refs/main -> commit
    assert (snap / "model.safetensors").is_symlink()
    assert (_repo_dir() / "blobs" / _blob_sha(tiny_dir)).is_file()
    assert (_repo_dir() / "refs" / "main").read_text() == res.commit
    assert not list((_repo_dir() / "blobs").glob("*.incomplete"))
    # files it must not fetch were never requested
    fetched = {r.file for r in hub_env.requests if r.method == "GET" and r.file}
    assert fetched == NEEDED
    # byte progress over all files, never going back, ending at 100%
    total = sum((snap / n).stat().st_size for n in NEEDED)
    assert res.total_bytes == res.downloaded_bytes == total
    steps = [(d, t) for d, t, _ in ev.progresses if t is not None]
    assert steps and all(t == total for _, t in steps)
    assert [d for d, _ in steps] == sorted(d for d, _ in steps)
    assert steps[-1] == (total, total)
    # guaranteed whatever the timing: the look-up is reported before the byte count is known, and
    # bytes are reported while they arrive (the first chunk always passes the throttle), not only at
    # the end. Which file a throttled report happens to name is not: a fast local download may finish
    # model.safetensors between two reports.
    assert ev.progresses[0][:2] == (0, None)
    assert all(isinstance(d, int) and 0 <= d <= total for d, _ in steps)
    assert len(steps) >= 2 and steps[0][0] < total
    # the look-up arrives typed too: nothing counted yet, in files (the repository's listing), naming the repository
    look_up, reports = ev.reports[0], ev.reports[1:]
    assert (look_up.done, look_up.total, look_up.unit, look_up.item) == (0, None, "file", REPO)
    # the byte counts arrive typed (unit, file, rate and time left as fields: no front end parses the text)
    assert len(reports) >= 2 and {(r.done, r.total) for r in reports} <= set(steps)
    assert (reports[-1].done, reports[-1].total) == (total, total)
    assert all(r.unit == "byte" for r in reports) and all(r.item in NEEDED for r in reports[:-1])
    assert reports[-1].item == REPO and reports[-1].eta == 0.0  # the last: the whole repository is here
    assert all(r.rate is None or r.rate > 0 for r in reports)
    assert res.check is not None and res.check.ok, res.check.problems
    (snap / "tokenizer.json").unlink()  # messages about a cached snapshot name the repo, not the commit
    assert hub.validate_model_dir(snap, load_tokenizer=False).problems == []  # vocab.json + merges.txt remain
    (snap / "model.safetensors").unlink()
    assert hub.validate_model_dir(snap, load_tokenizer=False).problems[0].message.startswith(f"{REPO} has no weights")
    hub.fetch_model(REPO, validate=False)  # puts the missing links back from the blobs

    # again, by branch: one listing and HEADs, no file bodies
    hub_env.reset()
    again = hub.fetch_model(REPO, events=RecordingEvents(), validate=False)
    assert again.downloaded_bytes == 0 and again.path == snap
    assert not [r for r in hub_env.requests if r.method == "GET" and r.file]
    # by the pinned commit: no request at all
    hub_env.reset()
    pinned = hub.fetch_model(REPO, res.commit, validate=False)
    assert pinned.path == snap and hub_env.requests == []


def test_dropped_connection_resumes_in_the_same_call_without_refetching_bytes(hub_env, tiny_dir):
    size = (tiny_dir / "model.safetensors").stat().st_size
    hub_env.drop_after("model.safetensors", 5_000_000)
    ev = RecordingEvents()
    res = hub.fetch_model(REPO, events=ev, validate=False)

    gets = hub_env.gets("model.safetensors")
    assert len(gets) == 2
    assert gets[0].range is None and gets[0].aborted and gets[0].bytes_sent == 5_000_000
    assert gets[1].range == "bytes=5000000-" and gets[1].status == 206
    assert hub_env.body_bytes("model.safetensors") == size  # not one byte twice
    assert _sha256(res.path / "model.safetensors") == _blob_sha(tiny_dir)
    assert any("connection lost" in text for _, text in ev.logs)
    done = [d for d, t, _ in ev.progresses if t is not None]
    assert done == sorted(done) and done[-1] == res.total_bytes


def test_interrupted_download_resumes_in_a_later_call_from_the_bytes_on_disk(hub_env, tiny_dir):
    size = (tiny_dir / "model.safetensors").stat().st_size
    hub_env.drop_after("model.safetensors", 6_000_000)
    with pytest.raises(hub.HubError, match="connection was lost") as err:
        hub.fetch_model(REPO, retries=0, validate=False)
    assert "resumes" in err.value.hint
    part = _repo_dir() / "blobs" / f"{_blob_sha(tiny_dir)}.incomplete"
    on_disk = part.stat().st_size
    assert on_disk == 6_000_000
    assert not (_repo_dir() / "blobs" / _blob_sha(tiny_dir)).exists()

    ev = RecordingEvents()
    res = hub.fetch_model(REPO, events=ev, validate=False)
    gets = hub_env.gets("model.safetensors")
    assert [g.range for g in gets] == [None, f"bytes={on_disk}-"]
    assert gets[1].bytes_sent == size - on_disk
    assert hub_env.body_bytes("model.safetensors") == size
    assert _sha256(res.path / "model.safetensors") == _blob_sha(tiny_dir)  # prefix + rest hash right
    assert not part.exists()
    # progress of the second call starts with what was already there
    first = next(d for d, t, _ in ev.progresses if t is not None)
    assert first >= on_disk


def test_cancel_stops_the_transfer_quickly_and_leaves_nothing_complete_looking(hub_env, tiny_dir, monkeypatch):
    size = (tiny_dir / "model.safetensors").stat().st_size
    hub_env.throttle(3_000_000)  # ~6.5 s for the weights
    token = CancelToken()
    # "quickly" in work, not in seconds (a loaded machine stretches seconds): after the cancel at
    # most the chunk already in hand is written, none is read after it
    chunks_after_cancel: list[int] = []
    add = hub._ByteProgress.add

    def counting_add(self, n):
        if token.cancelled:
            chunks_after_cancel.append(n)
        add(self, n)

    monkeypatch.setattr(hub._ByteProgress, "add", counting_add)
    cancelled_at: list[float] = []
    seen: list[str] = []

    class Watch(Events):
        def progress(self, done, total, what):
            seen.append(what)

    def canceller():
        while not token.cancelled:
            if any(w.startswith("downloading model.safetensors") and "left" in w for w in seen[-3:]):
                cancelled_at.append(time.monotonic())
                token.cancel()
            time.sleep(0.02)

    t = threading.Thread(target=canceller, daemon=True)
    t.start()
    with pytest.raises(Cancelled) as err:
        hub.fetch_model(REPO, events=Watch(), cancel=token, validate=False)
    stopped = time.monotonic()
    t.join(1)
    assert cancelled_at and stopped - cancelled_at[0] < 60  # (a hang guard, not a speed test)
    assert len(chunks_after_cancel) <= 1, chunks_after_cancel
    assert any("/s" in w and "left" in w for w in seen)  # speed and ETA were reported

    blobs = _repo_dir() / "blobs"
    snap_dirs = list((_repo_dir() / "snapshots").glob("*"))
    assert not any((d / "model.safetensors").exists() for d in snap_dirs)
    assert not (blobs / _blob_sha(tiny_dir)).exists()
    part = blobs / f"{_blob_sha(tiny_dir)}.incomplete"
    kept = part.stat().st_size
    assert 0 < kept < size and err.value.result["partial_bytes"] == kept
    # the server saw the connection go away: it stopped sending long before the end
    get = hub_env.gets("model.safetensors")[0]
    deadline = time.monotonic() + 3
    while not get.aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get.aborted and get.bytes_sent < size
    sent = get.bytes_sent
    time.sleep(0.3)
    assert get.bytes_sent == sent

    # fetching again resumes from the kept bytes
    hub_env.throttle(None)
    res = hub.fetch_model(REPO, validate=False)
    assert hub_env.gets("model.safetensors")[-1].range == f"bytes={kept}-"
    assert _sha256(res.path / "model.safetensors") == _blob_sha(tiny_dir)


@pytest.mark.parametrize("name,what", [("model.safetensors", "sha256"), ("config.json", "git blob id")])
def test_corrupted_file_is_detected_and_deleted(hub_env, tiny_dir, name, what):
    hub_env.corrupt(name)
    with pytest.raises(hub.IntegrityError) as err:
        hub.fetch_model(REPO, validate=False)
    assert name in str(err.value) and what in str(err.value)
    repo = _repo_dir()
    assert not any((d / name).exists() for d in (repo / "snapshots").glob("*"))
    assert not list((repo / "blobs").glob("*.incomplete"))
    if name == "model.safetensors":
        assert not (repo / "blobs" / _blob_sha(tiny_dir)).exists()
    hub_env.corrupt(name, on=False)
    res = hub.fetch_model(REPO, validate=False)
    assert (res.path / name).read_bytes() == (tiny_dir / name).read_bytes()


def test_gated_repo_401_says_where_to_put_a_token_and_a_token_opens_it(hub_env, monkeypatch):
    with pytest.raises(hub.GatedModelError) as err:
        hub.fetch_model(GATED, validate=False)
    msg = err.value.user_message()
    assert "gated" in str(err.value) and GATED in str(err.value)
    assert "HF_TOKEN" in msg and "hf auth login" in msg and "huggingface_hub.login" in msg
    assert str(hub.token_path()) in msg
    assert any(r.status == 401 for r in hub_env.requests)
    assert not (_repo_dir(GATED) / "snapshots").exists()

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub_env.reset()
    res = hub.fetch_model(GATED, validate=False)
    assert set(res.files) == NEEDED - {"LICENSE"}
    resolves = [r for r in hub_env.requests if "/resolve/" in r.path]
    assert resolves and all(r.authorized for r in resolves)
    cdn = [r for r in hub_env.requests if r.path.startswith("/lfs/")]
    assert cdn and not any(r.authorized for r in cdn)  # the token never goes to the CDN


def test_a_token_given_through_save_token_is_stored_where_huggingface_hub_reads_it(hub_env, monkeypatch):
    import huggingface_hub.hf_api as hf_api

    monkeypatch.setattr(hf_api.api, "endpoint", hub_env.url)  # login's whoami check (bound at import)
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(Path(constants.HF_TOKEN_PATH).parent / "stored"))
    with pytest.raises(hub.HubError, match="not accepted"):
        hub.save_token("hf_wrong")
    path = hub.save_token(TOKEN)
    assert path == Path(constants.HF_TOKEN_PATH) and path.read_text().strip() == TOKEN
    res = hub.fetch_model(GATED, validate=False)
    assert "model.safetensors" in res.files


def test_unknown_repo_and_revision_404(hub_env):
    with pytest.raises(hub.ModelNotFoundError) as err:
        hub.fetch_model("tiny/does-not-exist", validate=False)
    assert "tiny/does-not-exist" in str(err.value) and "No model" in str(err.value)
    assert "spelling" in err.value.hint
    with pytest.raises(hub.ModelNotFoundError, match="no revision 'v9'"):
        hub.fetch_model(REPO, "v9", validate=False)


def test_offline_uses_the_cache_and_says_so(hub_env, monkeypatch):
    first = hub.fetch_model(REPO, validate=False)
    hub_env.reset()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ev = RecordingEvents()
    res = hub.fetch_model(REPO, events=ev)
    assert res.offline and res.path == first.path and res.downloaded_bytes == 0
    assert "offline" in res.message.lower() and "cache" in res.message
    assert any(level == "warning" and "offline" in text.lower() for level, text in ev.logs)
    assert hub_env.requests == []
    assert res.check is not None and res.check.ok


def test_offline_before_any_download_is_a_clear_error(hub_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.OfflineError) as err:
        hub.fetch_model(REPO)
    assert "HF_HUB_OFFLINE" in str(err.value) and "not in the model cache" in str(err.value)
    assert "HF_HUB_OFFLINE" in err.value.hint
    assert hub_env.requests == []


def test_unreachable_hub_falls_back_to_the_cache(hub_env, monkeypatch):
    hub.fetch_model(REPO, validate=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    res = hub.fetch_model(REPO, validate=False)
    assert res.offline and "Cannot reach" in res.message
    monkeypatch.setenv("HF_HOME", str(Path(hub.hub_cache_dir()).parent / "empty"))
    with pytest.raises(hub.HubError, match="Cannot reach"):
        hub.fetch_model(REPO, validate=False)


def test_free_disk_is_checked_before_any_byte_is_fetched(hub_env, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(hub.DiskSpaceError) as err:
        hub.fetch_model(REPO, validate=False)
    assert "free" in str(err.value) and "HF_HOME" in err.value.hint
    assert not [r for r in hub_env.requests if r.method == "GET" and r.file]


def test_cli_fetch_main_prints_progress_and_a_summary(hub_env, capsys):
    from app.hub_cli import fetch_main

    assert fetch_main(REPO) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["repo_id"] == REPO and Path(summary["path"]).is_dir()
    assert "model folder:" in err and "B/s" in err  # tqdm's bar
    assert fetch_main("tiny/does-not-exist") == 1
    out, err = capsys.readouterr()
    assert "error: No model" in err and json.loads(out.strip().splitlines()[-1])["state"] == "failed"


# --------------------------------------------------------------------------- validation

def _clone(src: Path, dst: Path, copy: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> Path:
    """A model folder that links to ``src``'s files, with real copies of those a test changes."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name.startswith(".") or f.name in skip:
            continue
        if f.name in copy:
            shutil.copyfile(f, dst / f.name)
        else:
            (dst / f.name).symlink_to(f)
    return dst


def _edit_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    path.unlink()
    path.write_text(json.dumps(d))


def test_valid_model_passes(tiny_dir, tmp_path):
    check = hub.validate_model_dir(tiny_dir)
    assert check.ok, check.problems
    assert check.architecture == "Qwen2ForCausalLM" and check.model_type == "qwen2"
    assert check.dtype == "bfloat16" and check.tensor_dtypes == ["BF16"] and check.quantization is None
    assert check.has_chat_template and not check.base_model


def test_missing_weights(tiny_dir, tmp_path):
    d = _clone(tiny_dir, tmp_path / "m", skip=("model.safetensors",))
    check = hub.validate_model_dir(d, load_tokenizer=False)
    assert check.codes == ["missing_weights"]
    assert "no weights (*.safetensors)" in check.problems[0].message
    (d / "pytorch_model.bin").write_bytes(b"\0")
    assert "pytorch_model.bin" in hub.validate_model_dir(d, load_tokenizer=False).problems[0].message


def test_missing_shard_of_an_index(tiny_dir, tmp_path):
    d = _clone(tiny_dir, tmp_path / "m", skip=("model.safetensors",))
    (d / "model-00001-of-00002.safetensors").symlink_to(tiny_dir / "model.safetensors")
    header, _ = hub.read_safetensors_header(tiny_dir / "model.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in header if k != "__metadata__"}
    weight_map["model.norm.weight"] = "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    check = hub.validate_model_dir(d, load_tokenizer=False)
    assert check.codes == ["missing_weights"]
    assert "model-00002-of-00002.safetensors" in check.problems[0].message


def test_missing_tensors(tiny_dir, tmp_path):
    import mlx.core as mx

    d = _clone(tiny_dir, tmp_path / "m", skip=("model.safetensors",))
    weights = mx.load(str(tiny_dir / "model.safetensors"))
    del weights["model.layers.1.mlp.down_proj.weight"]
    mx.save_safetensors(str(d / "model.safetensors"), weights)
    check = hub.validate_model_dir(d, load_tokenizer=False)
    assert check.codes == ["missing_tensors"]
    assert "model.layers.1.mlp.down_proj.weight" in check.problems[0].message


def test_missing_tokenizer(tiny_dir, tmp_path):
    d = _clone(tiny_dir, tmp_path / "m", skip=("tokenizer.json", "vocab.json", "merges.txt"))
    check = hub.validate_model_dir(d)
    assert check.codes == ["missing_tokenizer"]
    assert "has no tokenizer" in check.problems[0].message


def test_unloadable_tokenizer(tiny_dir, tmp_path):
    d = _clone(tiny_dir, tmp_path / "m", skip=("tokenizer.json", "vocab.json", "merges.txt"))
    (d / "tokenizer.json").write_text("{ this is not a tokenizer")
    check = hub.validate_model_dir(d)
    assert check.codes == ["tokenizer_unloadable"]
    assert "cannot be loaded" in check.problems[0].message


@pytest.mark.parametrize("arch,model_type,why", [
    ("BertForMaskedLM", "bert", "neither mlx-lm nor"),
    ("GPT2LMHeadModel", "gpt2", "GGUF exporter cannot export it"),
])
def test_unsupported_architecture(tiny_dir, tmp_path, arch, model_type, why):
    d = _clone(tiny_dir, tmp_path / "m", copy=("config.json",))
    _edit_json(d / "config.json", architectures=[arch], model_type=model_type)
    check = hub.validate_model_dir(d, load_tokenizer=False)
    assert check.codes == ["unsupported_architecture"]
    msg = check.problems[0].message
    assert arch in msg and "not supported" in msg and why in msg
    assert "Qwen3ForCausalLM" in check.problems[0].hint


def test_truncated_safetensors(tiny_dir, tmp_path):
    d = _clone(tiny_dir, tmp_path / "m", copy=("model.safetensors",))
    size = (d / "model.safetensors").stat().st_size
    with open(d / "model.safetensors", "r+b") as fh:
        fh.truncate(size - 12345)
    check = hub.validate_model_dir(d, load_tokenizer=False)
    assert check.codes == ["truncated_weights"]
    assert "model.safetensors is truncated" in check.problems[0].message
    assert f"{size - 12345:,}" in check.problems[0].message and f"{size:,}" in check.problems[0].message
    with open(d / "model.safetensors", "r+b") as fh:  # cut inside the header
        fh.truncate(100)
    assert hub.validate_model_dir(d, load_tokenizer=False).codes == ["truncated_weights"]


def test_base_model_is_accepted_and_told_which_template(tiny_dir, tmp_path):
    d = _clone(tiny_dir, tmp_path / "m", copy=("tokenizer_config.json",))
    _edit_json(d / "tokenizer_config.json", chat_template=None)
    check = hub.validate_model_dir(d)
    assert check.ok and check.base_model and not check.has_chat_template
    assert check.fallback_template == "chatml"
    assert any("base model" in n and "chatml" in n for n in check.notes)


def test_dtype_and_quantization_recognised_or_rejected(tiny_dir, tmp_path):
    d = _clone(tiny_dir, tmp_path / "m", copy=("config.json",))
    _edit_json(d / "config.json", torch_dtype="float8_e4m3fn")
    assert hub.validate_model_dir(d, load_tokenizer=False).codes == ["unknown_dtype"]
    _edit_json(d / "config.json", torch_dtype="bfloat16", quantization_config={"quant_method": "gptq", "bits": 4})
    check = hub.validate_model_dir(d, load_tokenizer=False)
    assert check.codes == ["unsupported_quantization"] and "gptq" in check.problems[0].message


def test_quantized_mlx_model_is_recognised(tiny_dir, tmp_path):
    import mlx.core as mx
    import mlx.nn as nn

    from core.train import load_base

    model, config = load_base(tiny_dir)
    nn.quantize(model, group_size=32, bits=4)
    from mlx.utils import tree_flatten

    d = _clone(tiny_dir, tmp_path / "q", skip=("model.safetensors", "config.json"))
    mx.save_safetensors(str(d / "model.safetensors"),
                        {k: v for k, v in tree_flatten(model.parameters())}, metadata={"format": "mlx"})
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["quantization"] = {"group_size": 32, "bits": 4}
    (d / "config.json").write_text(json.dumps(cfg))
    check = hub.validate_model_dir(d, load_tokenizer=False)
    assert check.ok, check.problems
    assert check.quantization == {"bits": 4, "group_size": 32} and "U32" in check.tensor_dtypes


def test_every_problem_is_reported_not_only_the_first(tiny_dir, tmp_path):
    d = _clone(tiny_dir, tmp_path / "m", skip=("model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"))
    check = hub.validate_model_dir(d)
    assert sorted(check.codes) == ["missing_tokenizer", "missing_weights"]
    with pytest.raises(hub.ModelInvalid) as err:
        check.raise_if_invalid()
    assert "1 more problem" in str(err.value) and "tokenizer" in err.value.hint


def test_import_local_folder_copies_only_what_is_needed(tiny_dir, tmp_path):
    src = _clone(tiny_dir, tmp_path / "My Model")
    (src / "README.md").write_text("readme")
    (src / "pytorch_model.bin").write_bytes(b"\0")
    ev = RecordingEvents()
    check = hub.import_local_model(src, dest_root=tmp_path / "models", events=ev)
    assert check.ok and check.path == tmp_path / "models" / "My-Model"
    names = {f.name for f in check.path.iterdir()}
    assert "README.md" not in names and "pytorch_model.bin" not in names and "model.safetensors" in names
    assert not (check.path / "model.safetensors").is_symlink()
    assert ev.progresses[-1][0] == ev.progresses[-1][1]
    # typed from the first report to the last: the check (no count yet) and the copied bytes, naming the folder
    assert (ev.reports[0].done, ev.reports[0].total, ev.reports[0].unit, ev.reports[0].item) == (0, None, "file",
                                                                                                   "My Model")
    assert ev.reports[-1].unit == "byte" and ev.reports[-1].item == "My Model"
    assert ev.reports[-1].done == ev.reports[-1].total == sum(f.stat().st_size for f in check.path.iterdir())
    bad = _clone(tiny_dir, tmp_path / "bad", skip=("model.safetensors",))
    with pytest.raises(hub.ModelInvalid, match="no weights"):
        hub.import_local_model(bad, dest_root=tmp_path / "models")
    assert hub.resolve_model(src) == src
