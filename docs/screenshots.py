"""Screenshots of every page of the window (offscreen), for the README.

    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/screenshots.py

Loads the sample dataset and trains the demo model briefly so every page shows real state.
"""
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TUNELOOM_HOME", tempfile.mkdtemp(prefix="tuneloom-shots-"))
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import core  # noqa: E402,F401
from PySide6.QtCore import QEventLoop, QSettings, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from app.gui.main_window import MainWindow  # noqa: E402
from core.paths import demo_data_dir  # noqa: E402


def wait(app, cond, timeout=300):
    import time

    end = time.time() + timeout
    while not cond():
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        if time.time() > end:
            raise TimeoutError


def main():
    app = QApplication.instance() or QApplication(sys.argv)
    out = ROOT / "docs"
    settings = QSettings(str(Path(os.environ["TUNELOOM_HOME"]) / "s.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings=settings)
    w.resize(1100, 760)
    w.show()

    def shot(row, name):
        w.steps.setCurrentRow(row)
        for _ in range(5):
            app.processEvents()
        w.grab().save(str(out / f"{name}.png"))
        print("wrote", out / f"{name}.png")

    shot(0, "page-model")
    w.load_data([demo_data_dir() / "train.jsonl"])
    wait(app, lambda: w.dataset is not None)
    shot(1, "page-data")
    w.train_page.iters.setValue(120)
    w.start_training()
    wait(app, lambda: not w.jobs["train"].running and len(w.train_page.plot.train[0]) > 0)
    shot(2, "page-train")
    w.try_page.prompt.setText("Describe the blue kettle in structured format.")
    w.ask()
    wait(app, lambda: not w.jobs["try"].running and w.try_page.tuned_out.toPlainText() not in ("...", ""))
    shot(3, "page-try")
    w.export()
    wait(app, lambda: not w.jobs["export"].running)
    shot(4, "page-export")


if __name__ == "__main__":
    main()
