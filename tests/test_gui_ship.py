"""The Export page's merged/adapter choice, other targets and Share section on a tiny demo run (pytest-qt)."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import QSettings, Qt  # noqa: E402

from app.gui.main_window import MainWindow  # noqa: E402
from core.paths import demo_model_dir  # noqa: E402
from tests.fixtures.eval_run import tiny_run  # noqa: E402
from tests.fixtures.ollama_server import FakeOllama  # noqa: E402


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("TUNELOOM_HOME", str(tmp_path / "home"))
    dst = tmp_path / "run"
    shutil.copytree(tiny_run(), dst)
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


def test_every_target_shows_its_size_and_what_it_is_for(window):
    ship = window.export_page.ship
    kinds = [ship.kind.itemText(i) for i in range(ship.kind.count())]
    assert kinds[0].startswith("Merged (one file)") and "B" in kinds[0], kinds
    assert kinds[1].startswith("Adapter (small, shares the base)") and "+ base" in kinds[1], kinds
    for key in ("lmstudio", "mlx", "peft"):
        assert ship.size_labels[key].text().startswith("about "), key
        assert ship.buttons[key].isEnabled()
    assert "merged" in ship.kind_note.text().lower()
    assert not ship.push_btn.isEnabled(), "no repository given yet"
    ship.repo.setText("me/kettle")
    assert ship.push_btn.isEnabled()


def test_adapter_export_to_ollama_from_the_page(window, qtbot, monkeypatch, run_dir):
    page = window.export_page
    page.ship.kind.setCurrentIndex(1)
    assert page.ship.adapter_only() and "ADAPTER" in page.ship.kind_note.text()
    with FakeOllama(max_lifetime=1800) as srv:
        monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{srv.port}")
        page.name.setText("kettle-adapter")
        page.quant.setCurrentIndex(page.quant.findData("f16"))
        qtbot.mouseClick(page.export_btn, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: page.slots["export"].job is not None, timeout=30000)
        qtbot.waitUntil(lambda: not page.slots.running("export") and not page.slots.running("export-check"),
                        timeout=300000)
        assert srv.problems == []
        (create,) = srv.calls("POST", "/api/create")
        assert create.json["adapters"] == {"adapter-f16.gguf": srv.models["kettle-adapter:latest"].adapters[
            "adapter-f16.gguf"]}
    assert (run_dir / "exports" / "adapter-f16.gguf").is_file()
    assert "kettle-adapter" in page.result.text()


def test_peft_target_writes_the_folder(window, qtbot, run_dir):
    ship = window.export_page.ship
    window.export_page.ship_section.expand(animate=False)  # "More places" is folded at first, as a user finds it
    qtbot.waitUntil(lambda: ship.buttons["peft"].height() > 0 and ship.buttons["peft"].isEnabled(), timeout=30000)
    qtbot.mouseClick(ship.buttons["peft"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.export_page.slots.running("ship"), timeout=120000)
    assert (run_dir / "exports" / "peft" / "adapter_config.json").is_file(), ship.target_result.text()
    assert "peft" in ship.target_result.text()
