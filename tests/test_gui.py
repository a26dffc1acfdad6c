"""The window walks the whole flow on the demo model (offscreen, pytest-qt)."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent  # noqa: E402

from app.gui.main_window import MainWindow  # noqa: E402
from core.paths import demo_data_dir  # noqa: E402


@pytest.fixture
def window(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings=settings)
    qtbot.addWidget(w)
    w.show()
    return w


def _drop(widget, paths):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    enter = QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                            Qt.KeyboardModifier.NoModifier)
    widget.dragEnterEvent(enter)
    assert enter.isAccepted()
    drop = QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    widget.dropEvent(drop)


def test_whole_flow_train_try_export(window, qtbot):
    w = window
    assert w.model_dir is not None  # the demo model is the default
    _drop(w.data_page.drop, [demo_data_dir() / "train.jsonl"])
    qtbot.waitUntil(lambda: w.dataset is not None, timeout=30000)
    assert "320" in w.data_page.summary.text() and w.data_page.problems.count() == 0
    assert "Describe the" in w.data_page.preview.toPlainText()

    w.train_page.iters.setValue(40)
    w.train_page.lr.setCurrentText("2e-3")
    qtbot.mouseClick(w.train_page.start_btn, Qt.MouseButton.LeftButton)
    job = w.jobs["train"]
    with qtbot.waitSignal(job.ended, timeout=240000):
        pass
    xs, ys = w.train_page.plot.train
    assert xs == list(range(1, 41)) and ys[-1] < ys[0]  # the live curve got every step
    assert "Done" in w.train_page.status.text()
    assert (w.run_dir / "adapters.safetensors").exists()

    w.try_page.prompt.setText("Describe the blue kettle in structured format.")
    qtbot.mouseClick(w.try_page.ask_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.try_page.tuned_out.toPlainText() not in ("...", ""), timeout=60000)
    assert w.try_page.base_out.toPlainText() != w.try_page.tuned_out.toPlainText()

    qtbot.mouseClick(w.export_page.export_btn, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(w.jobs["export"].ended, timeout=120000):
        pass
    assert "GGUF:" in w.export_page.result.text(), w.export_page.result.text()
    gguf = w.run_dir / "exports" / "model-f16.gguf"
    assert gguf.exists() and (gguf.parent / "Modelfile").exists()
    assert "ollama create" in w.export_page.result.text()


def test_stop_cancels_training(window, qtbot):
    w = window
    w.load_data([demo_data_dir()])
    qtbot.waitUntil(lambda: w.dataset is not None, timeout=30000)
    w.train_page.iters.setValue(5000)
    qtbot.mouseClick(w.train_page.start_btn, Qt.MouseButton.LeftButton)
    job = w.jobs["train"]
    qtbot.waitUntil(lambda: len(w.train_page.plot.train[0]) >= 2, timeout=120000)
    with qtbot.waitSignal(job.ended, timeout=60000):
        qtbot.mouseClick(w.train_page.stop_btn, Qt.MouseButton.LeftButton)
    assert "Stopped" in w.train_page.status.text()
    assert len(w.train_page.plot.train[0]) < 5000
    assert w.train_page.start_btn.isEnabled()


def test_bad_file_shows_problems_not_a_crash(window, qtbot, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hello", "completion": "world"}\n{"prompt": ""}\n')
    window.load_data([bad])
    qtbot.waitUntil(lambda: window.dataset is not None, timeout=30000)
    assert window.data_page.problems.count() == 1
    assert "line 2" in window.data_page.problems.item(0).text()
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\x00\xff" * 100)
    window.load_data([junk])
    qtbot.waitUntil(lambda: "Cannot use" in window.data_page.summary.text(), timeout=30000)


def test_loss_plot_survives_many_repaints(qtbot):
    """PySide6 6.12.0 + pyqtgraph crashed after a few thousand repaints (refcount bug on None)."""
    from PySide6.QtWidgets import QApplication

    from app.gui.widgets import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.show()
    for i in range(3000):
        plot.add("train_loss", i, 1.0 / (i + 1))
        if i % 100 == 0:
            plot.add("valid_loss", i, 1.0 / (i + 2))
        plot.repaint()
        if i % 50 == 0:
            QApplication.processEvents()
    assert len(plot.train[0]) == 3000
