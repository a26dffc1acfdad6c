"""Registration in Ollama through its REST API, against a recording fake server.

tests/fixtures/ollama_server.py checks each request against Ollama's documented
API (blob digests recomputed from the bytes received, /api/create payload fields
and types, model names) and can play an old server, a full disk, a dropped
connection and existing models.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx
import pytest

from core.export import ollama as ol
from core import chat_templates as ct
from core.events import CallbackEvents, CancelToken, Cancelled, RecordingEvents
from tests.fixtures.ollama_server import FakeOllama, free_port

FIXTURES = Path(__file__).parent / "fixtures" / "models"


@pytest.fixture(scope="module")
def qwen_template():
    cfg = json.loads((FIXTURES / "Qwen2.5-0.5B-Instruct" / "tokenizer_config.json").read_text(encoding="utf-8"))
    return ct.go_template_for(cfg)


@pytest.fixture
def gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + os.urandom(1_500_000))
    return path


@pytest.fixture
def server():
    with FakeOllama() as srv:
        yield srv
        assert srv.problems == [], "requests that break Ollama's documented API"


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _register(gguf, name, server, qwen_template, **kw):
    template, stops = qwen_template
    return ol.register_model(gguf, name, template=template, stops=stops, host=server.url, **kw)


def test_full_registration(gguf, server, qwen_template):
    events = RecordingEvents()
    template, stops = qwen_template
    res = ol.register_model(gguf, "tuned", template=template, stops=stops, system="Be brief.",
                            parameters={"temperature": 0.2, "num_ctx": 2048}, quantize="Q4_K_M",
                            host=server.url, events=events)
    digest = _sha(gguf)
    assert res["model"] == "tuned:latest" and res["digest"] == digest and res["uploaded"] is True
    assert res["answer"] == server.answer and res["quantize"] == "q4_K_M" and res["replaced"] is False

    # the blob: looked up, uploaded once with exactly the file's bytes, looked up again
    uploads = server.blob_uploads()
    assert len(uploads) == 1 and uploads[0].path == f"/api/blobs/{digest}"
    assert uploads[0].body_sha256 == digest and uploads[0].body_len == gguf.stat().st_size
    assert uploads[0].status == 201 and server.blobs[digest] == gguf.read_bytes()
    heads = [r.status for r in server.calls("HEAD", "/api/blobs/")]
    assert heads == [404, 200]

    # the create payload, as the API documents it
    (create,) = server.calls("POST", "/api/create")
    body = create.json
    assert body["model"] == "tuned:latest" and body["files"] == {"model.gguf": digest}
    assert body["template"] == template and body["system"] == "Be brief."
    assert body["parameters"] == {"temperature": 0.2, "num_ctx": 2048, "stop": stops}
    assert body["quantize"] == "q4_K_M" and body["stream"] is True
    assert set(body) <= {"model", "files", "template", "system", "parameters", "quantize", "stream", "license"}

    # verified: listed, template stored, answers
    assert "tuned:latest" in server.models and server.models["tuned:latest"].template == template
    (chat,) = server.calls("POST", "/api/chat")
    assert chat.json["model"] == "tuned:latest" and chat.json["messages"][0]["role"] == "user"
    assert chat.json["keep_alive"] == 0 and chat.json["stream"] is False
    assert [r.path for r in server.requests].index("/api/chat") > [r.path for r in server.requests].index(
        "/api/create")

    # progress: hashing and uploading reach the file size, quantizing reaches its total
    size = gguf.stat().st_size
    assert any(d == t == size and w.startswith("checking") for d, t, w in events.progresses)
    assert any(d == t == size and w.startswith("uploading") for d, t, w in events.progresses)
    assert any(d == t == 100 and "quantizing" in w for d, t, w in events.progresses)
    # typed: bytes, with the file name as the item while hashing and uploading
    assert any(r.unit == "byte" and r.done == r.total == size and r.item == gguf.name for r in events.reports)
    assert {r.unit for r in events.reports} == {"byte"}


def test_second_registration_skips_upload(gguf, server, qwen_template):
    first = _register(gguf, "tuned", server, qwen_template)
    second = _register(gguf, "tuned-copy:v2", server, qwen_template)
    assert first["uploaded"] is True and second["uploaded"] is False
    assert len(server.blob_uploads()) == 1, "the same GGUF is uploaded once"
    assert [r.status for r in server.calls("HEAD", "/api/blobs/")] == [404, 200, 200]
    assert server.calls("POST", "/api/create")[1].json["files"] == {"model.gguf": first["digest"]}
    assert {"tuned:latest", "tuned-copy:v2"} <= set(server.models)


def test_default_parameters_and_file_name(tmp_path, server, qwen_template):
    gguf = tmp_path / "weird name (1).gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 1000)
    _register(gguf, "plain", server, qwen_template)
    body = server.calls("POST", "/api/create")[0].json
    assert body["files"] == {"model.gguf": _sha(gguf)}, "file names Ollama might refuse are replaced"
    assert body["parameters"] == {"temperature": ol.DEFAULT_TEMPERATURE, "stop": qwen_template[1]}
    assert "system" not in body and "quantize" not in body


def test_name_clash(gguf, qwen_template):
    with FakeOllama(models=["Tuned:latest", "other"]) as server:
        with pytest.raises(ol.OllamaNameTaken) as err:
            _register(gguf, "tuned", server, qwen_template)
        assert "--force" in err.value.hint
        assert not server.calls("HEAD", "/api/blobs/") and not server.calls("POST", "/api/create"), \
            "nothing is uploaded for a name that is taken"
        res = _register(gguf, "tuned", server, qwen_template, force=True)
        assert res["replaced"] is True and server.models["tuned:latest"].files == {"model.gguf": _sha(gguf)}
        assert server.problems == []


@pytest.mark.parametrize("name", ["", "my model", "-leading-dash", "a..b", "emoji🎉", "a:b:c", "ns.x/model",
                                  "x" * 129, "model:", "a/b/c/d", "tag:-bad"])
def test_invalid_names(name, gguf, server, qwen_template):
    with pytest.raises(ol.OllamaNameInvalid) as err:
        _register(gguf, name, server, qwen_template)
    assert server.requests == [], "the name is checked before anything is sent"
    assert err.value.suggestion and ol.validate_model_name(err.value.suggestion)


@pytest.mark.parametrize("name, normal", [
    ("tuned", "tuned:latest"), ("Tuned-1.5B_chat:q4_K_M", None), ("me/tuned", "me/tuned:latest"),
    ("host.example/me/tuned:v1", None)])
def test_valid_names(name, normal):
    assert ol.validate_model_name(name) == (normal or name)


def test_server_not_running(gguf, qwen_template, monkeypatch, tmp_path):
    host = f"http://127.0.0.1:{free_port()}"
    assert ol.find_server(host) is None
    modelfile = tmp_path / "Modelfile"
    for installed, words in ((True, "not running"), (False, "not seem to be installed")):
        monkeypatch.setattr(ol, "ollama_installed", lambda installed=installed: installed)
        template, stops = qwen_template
        with pytest.raises(ol.OllamaNotRunning) as err:
            ol.register_model(gguf, "tuned", template=template, stops=stops, host=host, modelfile_path=modelfile)
        msg = err.value.user_message()
        assert words in msg and host in msg
        assert f"ollama create tuned -f {modelfile.resolve()}" in msg
        assert err.value.create_command == ol.ollama_create_command(modelfile, "tuned")
        assert err.value.installed is installed
    # the default Modelfile is the one next to the GGUF
    with pytest.raises(ol.OllamaNotRunning) as err:
        ol.register_model(gguf, "tuned", template=template, stops=stops, host=host)
    assert str(gguf.with_name("Modelfile").resolve()) in err.value.user_message()


def test_find_server_uses_ollama_host(server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{server.port}")
    assert ol.find_server() == server.url
    monkeypatch.setenv("OLLAMA_HOST", f"0.0.0.0:{server.port}")  # a listen address: connect locally
    assert ol.find_server() == server.url
    monkeypatch.delenv("OLLAMA_HOST")
    assert ol.default_host() == "http://127.0.0.1:11434"


def test_server_too_old(gguf, server, qwen_template):
    server.version = "0.5.4"
    with pytest.raises(ol.OllamaTooOld) as err:
        _register(gguf, "tuned", server, qwen_template)
    assert "0.5.4" in str(err.value) and "0.5.5" in str(err.value) and "ollama create" in err.value.hint
    assert not server.blob_uploads()


def test_old_api_behind_a_dev_version(gguf, server, qwen_template):
    """A source build says 0.0.0; if its /api/create is the old one, the answer still says 'update'."""
    server.version = "0.0.0"
    with pytest.raises(ol.OllamaTooOld, match="path or Modelfile are required"):
        _register(gguf, "tuned", server, qwen_template)


def test_unknown_architecture_means_update(gguf, server, qwen_template):
    server.chat_error = "unable to load model: unknown model architecture: 'qwen3'"
    with pytest.raises(ol.OllamaTooOld, match="architecture"):
        _register(gguf, "tuned", server, qwen_template)


@pytest.mark.parametrize("where", ["blob", "create"])
def test_disk_full(where, gguf, server, qwen_template):
    server.disk_full = where
    with pytest.raises(ol.OllamaDiskFull) as err:
        _register(gguf, "tuned", server, qwen_template)
    assert "no space left on device" in str(err.value)
    assert "ollama rm" in err.value.hint and "ollama create tuned -f" in err.value.hint
    assert "tuned:latest" not in server.models


def test_interrupted_upload_then_retry(gguf, server, qwen_template):
    server.drop_uploads = 1
    with pytest.raises(ol.OllamaUploadInterrupted) as err:
        _register(gguf, "tuned", server, qwen_template)
    assert "again" in err.value.hint and err.value.create_command
    assert server.blob_uploads()[0].note == "dropped" and not server.blobs
    assert not server.calls("POST", "/api/create")

    res = _register(gguf, "tuned", server, qwen_template)
    assert res["uploaded"] is True
    first, second = server.blob_uploads()
    assert second.body_sha256 == _sha(gguf) and second.status == 201
    # the retry asked again whether the blob was there before uploading
    statuses = [(r.method, r.status) for r in server.requests if r.path.startswith("/api/blobs/")]
    assert statuses == [("HEAD", 404), ("POST", None), ("HEAD", 404), ("POST", 201), ("HEAD", 200)]


def test_cancel_during_upload(gguf, server, qwen_template):
    cancel = CancelToken()

    def progress(done, total, what):
        if what.startswith("uploading"):
            cancel.cancel()

    with pytest.raises(Cancelled):
        _register(gguf, "tuned", server, qwen_template, events=CallbackEvents(progress=progress), cancel=cancel)
    assert not server.blobs and not server.calls("POST", "/api/create")


def test_bad_quantize_and_missing_file(gguf, server, qwen_template, tmp_path):
    with pytest.raises(ol.OllamaError, match="cannot quantize"):
        _register(gguf, "tuned", server, qwen_template, quantize="q3_K_S")
    with pytest.raises(ol.OllamaError, match="does not exist"):
        _register(tmp_path / "missing.gguf", "tuned", server, qwen_template)
    assert server.requests == []


def test_fake_server_checks_requests(tmp_path):
    """The fake refuses what Ollama refuses, so the tests above do check something."""
    with FakeOllama() as srv, httpx.Client(base_url=srv.url) as http:
        data = b"GGUF" + b"x" * 100
        good = "sha256:" + hashlib.sha256(data).hexdigest()
        wrong = "sha256:" + "0" * 64
        r = http.post(f"/api/blobs/{wrong}", content=data)
        assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
        assert http.post("/api/blobs/sha256:xyz", content=data).status_code == 400
        assert http.post(f"/api/blobs/{good}", content=data).status_code == 201
        assert http.head(f"/api/blobs/{good}").status_code == 200
        assert http.post(f"/api/blobs/{good}", content=data).status_code == 200  # already there

        def create(**body):
            return http.post("/api/create", json={"model": "m", "files": {"model.gguf": good}, **body})

        assert create(stream=False).json() == {"status": "success"}
        for bad in ({"modelfile": "FROM x"}, {"parameters": {"stop": "x"}}, {"parameters": {"nonsense": 1}},
                    {"quantize": "q2_K"}, {"files": {"/abs/model.gguf": good}}, {"files": {"model.gguf": wrong}},
                    {"model": "bad name"}, {"template": "{{ .Prompt }"}, {"system": 3}):
            r = create(**bad)
            assert r.status_code == 400, bad
        assert len(srv.problems) == 10  # the bad digest format and the nine bad creates
        assert http.post("/api/show", json={"model": "m"}).json()["template"] == ""
        assert http.request("DELETE", "/api/delete", json={"model": "m"}).status_code == 200
        assert http.get("/api/tags").json() == {"models": []}
