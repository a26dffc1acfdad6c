"""core.export.run: the window's export job, which `tuneloom export --ollama` uses for its check too."""
import json
import shutil

import pytest

from tests.fixtures.eval_run import tiny_run
from tests.fixtures.ollama_server import FakeOllama


@pytest.fixture
def run_dir(tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_run(), dst)
    shutil.rmtree(dst / "exports", ignore_errors=True)
    return dst


def test_cli_export_to_ollama_sets_ollamas_answer_beside_tuneloom_s(run_dir, tmp_path, monkeypatch, capsys):
    from app.cli import main
    from core.export.run import VERIFY_TOKENS, tuneloom_answer, verify_messages

    with FakeOllama(max_lifetime=1800) as srv:
        monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{srv.port}")
        srv.answer = "an answer from ollama"
        rc = main(["export", str(run_dir), "--gguf", str(tmp_path / "m.gguf"), "--quant", "q8_0", "--ollama", "kb"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        chats = [r for r in srv.requests if r.path == "/api/chat"]
    res = json.loads(out.strip().splitlines()[-1])
    msgs = verify_messages(run_dir)
    assert msgs and chats[-1].json["messages"] == msgs  # the held-out question, asked greedily
    assert chats[-1].json["options"]["temperature"] == 0 and chats[-1].json["options"]["num_predict"] == VERIFY_TOKENS
    check = res["answer_check"]
    assert check["ollama"] == "an answer from ollama"
    assert check["tuneloom"] == tuneloom_answer(run_dir, msgs) != ""  # greedy: the same answer again
    assert check["same"] is False and "the answers differ" in err
    assert check["question"] == next(m["content"] for m in reversed(msgs) if m["role"] == "user")


def test_answer_check_is_none_without_a_question():
    from core.export.run import answer_check

    assert answer_check({"ollama": {"answer": "x"}}) is None
    assert answer_check({"ollama": {"answer": " x\n"}, "tuneloom_answer": "x",
                         "verify_messages": [{"role": "user", "content": "q"}]}) == {
        "question": "q", "ollama": " x\n", "tuneloom": "x", "same": True}
