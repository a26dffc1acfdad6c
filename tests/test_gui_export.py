"""The Export page on a tiny trained demo run, against the recording Ollama server on 127.0.0.1 (pytest-qt)."""
import json
import os
import re
import socket

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import QSettings, Qt  # noqa: E402

from app.gui.main_window import MainWindow  # noqa: E402
from core.paths import demo_model_dir  # noqa: E402
from tests.fixtures.eval_run import tiny_run  # noqa: E402
from tests.fixtures.ollama_server import FakeOllama  # noqa: E402

ALL = ["fuse", "gguf", "upload", "create", "verify"]


@pytest.fixture
def run_dir(tmp_path):
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(tiny_run(), dst)  # each test exports into its own copy
    shutil.rmtree(dst / "exports", ignore_errors=True)
    return dst


@pytest.fixture
def window(qtbot, tmp_path, run_dir):
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.session.model_dir is not None, timeout=30000)
    w.session.update(model_dir=demo_model_dir(), run_dir=run_dir)
    w.go_to(4)
    return w


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def click_and_wait(w, qtbot, button, timeout=300000):
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    slots = w.export_page.slots
    qtbot.waitUntil(lambda: slots["export"].job is not None, timeout=30000)
    qtbot.waitUntil(lambda: not slots.running("export") and not slots.running("export-check"), timeout=timeout)


def test_quant_items_name_validation(window, qtbot):
    page = window.export_page
    # the sizes are worked out off the GUI thread
    qtbot.waitUntil(lambda: all("about" in page.quant.itemText(i) for i in range(page.quant.count())), timeout=30000)
    texts = [page.quant.itemText(i) for i in range(page.quant.count())]
    for q in ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"):
        assert any(q in t for t in texts), texts
    # sizes computed before writing (the demo's Q4_K_M is 740 KB: issue 27 made them the files' true sizes)
    assert all(re.search(r"about \d+\.\d (KB|MB)$", t) for t in texts), texts
    page.name.setText("Bad Name!")
    assert not page.export_btn.isEnabled() and "bad-name" in page.name_note.text()
    assert page.gguf_btn.isEnabled()
    page.name.setText("kettle-bot:v1")
    assert page.export_btn.isEnabled() and page.name_note.text() == ""


def test_export_to_ollama_goes_through_every_stage_and_verifies(window, qtbot, monkeypatch, run_dir):
    from core.runs import RunInfo

    page = window.export_page
    with FakeOllama(max_lifetime=1800) as srv:
        monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{srv.port}")
        srv.answer = "an answer from ollama"
        page.name.setText("kettle-bot")
        page.quant.setCurrentIndex(page.quant.findData("q8_0"))
        page.temperature.setValue(0.3)
        seen = []
        page.slots["export"].started.connect(
            lambda job: job.events.stage_started.connect(seen.append))  # the typed stage events
        click_and_wait(window, qtbot, page.export_btn)
        assert seen == ALL, (seen, page.result.text())
        assert all(page.stages.states[k] == "done" for k in ALL), page.stages.states
        assert "Registered in Ollama as <b>kettle-bot:latest</b>" in page.result.text(), page.result.text()
        assert "an answer from ollama" in page.result.text()
        assert page.command.text() == "ollama run kettle-bot:latest"
        assert not srv.problems, srv.problems
        chats = [r for r in srv.requests if r.path == "/api/chat"]
        assert chats and chats[-1].json["options"]["temperature"] == 0  # greedy verify
        from core.export.run import verify_messages

        assert chats[-1].json["messages"] == verify_messages(run_dir)  # a validation question
        create = [r for r in srv.requests if r.path == "/api/create"][-1].json
        assert create["parameters"]["temperature"] == pytest.approx(0.3)  # baked in
    gguf = run_dir / "exports" / "model-q8_0.gguf"
    assert gguf.is_file() and (run_dir / "exports" / "model-q8_0.Modelfile").is_file()
    assert "PARAMETER temperature 0.3" in (run_dir / "exports" / "model-q8_0.Modelfile").read_text()
    rec = json.loads((run_dir / "exports" / "model-q8_0.json").read_text())
    assert rec["ollama"] == "kettle-bot:latest" and rec["quant"] == "q8_0" and rec["time"]
    info = [e for e in RunInfo.load(run_dir).exports if e.kind == "gguf"]
    assert info and info[0].record["ollama"] == "kettle-bot:latest"


def test_no_server_writes_the_files_and_retry_registers_once_it_runs(window, qtbot, monkeypatch, run_dir):
    page = window.export_page
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")  # nothing listens there
    page.name.setText("kettle-bot")
    click_and_wait(window, qtbot, page.export_btn)
    gguf = run_dir / "exports" / "model-f16.gguf"
    assert gguf.is_file() and (run_dir / "exports" / "model-f16.Modelfile").is_file()
    text = page.result.text()
    assert "GGUF:" in text and ("not running" in text or "not installed" in text) and "Retry" in text, text
    if "ollama.com/download" in text:  # where to get Ollama: a link that opens, in the palette's link colour
        from PySide6.QtGui import QPalette
        from PySide6.QtWidgets import QApplication

        from app.gui import theme

        assert page.result.openExternalLinks()
        app = QApplication.instance()
        light = QPalette(app.palette())
        try:
            app.setPalette(theme.dark_palette())
            qtbot.waitUntil(lambda: theme.dark_palette().color(QPalette.ColorRole.Link).name() in page.result.text(),
                            timeout=5000)
        finally:
            app.setPalette(light)
        qtbot.waitUntil(lambda: light.color(QPalette.ColorRole.Link).name() in page.result.text(), timeout=5000)
    assert page.retry_btn.isVisible() and page.retry_btn.isEnabled()
    assert page.stages.states["gguf"] == "done" and page.stages.states["upload"] == "failed"
    assert page.command.text().startswith("ollama create kettle-bot")
    mtime = gguf.stat().st_mtime_ns
    with FakeOllama(max_lifetime=1800) as srv:
        monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{srv.port}")  # Ollama is up now
        click_and_wait(window, qtbot, page.retry_btn)
        assert "Registered in Ollama as <b>kettle-bot:latest</b>" in page.result.text(), page.result.text()
        assert all(page.stages.states[k] == "done" for k in ALL), page.stages.states
        assert "kettle-bot:latest" in srv.models and not srv.problems
    assert gguf.stat().st_mtime_ns == mtime  # not written again
    assert not page.retry_btn.isVisible()


def test_a_taken_name_asks_before_replacing(window, qtbot, monkeypatch, run_dir):
    page = window.export_page
    asked = []
    with FakeOllama(models=["kettle-bot"], max_lifetime=1800) as srv:
        monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{srv.port}")
        page.name.setText("kettle-bot")
        monkeypatch.setattr(page, "confirm_replace", lambda name: asked.append(name) or False)
        qtbot.mouseClick(page.export_btn, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: bool(asked), timeout=30000)
        qtbot.waitUntil(lambda: not page.slots.running("export-check"), timeout=30000)
        assert "Not exported" in page.result.text()
        assert not (run_dir / "exports").exists()  # asked BEFORE writing anything
        monkeypatch.setattr(page, "confirm_replace", lambda name: asked.append(name) or True)
        click_and_wait(window, qtbot, page.export_btn)
        assert "replaced the old one" in page.result.text(), page.result.text()
        assert not srv.problems


def test_save_gguf_only_writes_a_gguf_llama_cpp_loads(window, qtbot, monkeypatch, run_dir):
    from core.export import llamacpp

    page = window.export_page
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")
    page.quant.setCurrentIndex(page.quant.findData("q8_0"))
    click_and_wait(window, qtbot, page.gguf_btn)
    gguf = run_dir / "exports" / "model-q8_0.gguf"
    assert gguf.is_file(), page.result.text()
    assert page.stages.states["gguf"] == "done" and page.stages.states["upload"] == "skipped"
    assert "Saved" in page.result.text() and not page.retry_btn.isVisible()
    if not llamacpp.available():
        pytest.skip("llama-cpp-python is not installed")
    m = llamacpp.LlamaCppModel(gguf, n_ctx=128)
    ids = m.tokenize("Hello")
    assert ids
    m.llm.eval(ids)
    assert m.llm.n_tokens == len(ids)


def test_two_exports_keep_their_own_modelfiles_and_the_adapter_choice_is_passed(window, qtbot, monkeypatch, run_dir):
    """Issue 27: one Modelfile per GGUF, named after it, so a second export does not re-point the first one's
    `ollama create` command; issue 28: the Export page merges the best adapter unless "Final adapter" is chosen."""
    import core.export.pipeline as ce

    page = window.export_page
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")  # nothing listens there: files only
    seen = []
    real = ce.export

    def spy(*a, **k):
        seen.append(k.get("final"))
        return real(*a, **k)

    monkeypatch.setattr(ce, "export", spy)
    page.name.setText("kettle-bot")
    for quant, choice in (("f16", "best"), ("q8_0", "final")):
        page.quant.setCurrentIndex(page.quant.findData(quant))
        page.adapter_choice.setCurrentIndex(page.adapter_choice.findData(choice))
        click_and_wait(window, qtbot, page.export_btn)
    assert seen == [False, True]
    exports = run_dir / "exports"
    for quant in ("f16", "q8_0"):
        mf = exports / f"model-{quant}.Modelfile"
        assert mf.is_file()
        frm = [line for line in mf.read_text().splitlines() if line.startswith("FROM ")]
        assert len(frm) == 1 and frm[0].endswith(f"model-{quant}.gguf"), frm
    assert not (exports / "Modelfile").exists()
