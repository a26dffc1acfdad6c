"""The window's part of issue 28 (run in the GUI test process, as ./dev test runs every test_gui_* file):
the plot marks the best point; the Train page names the best step, early stop and memorising."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

from app.gui.main import TuneloomApp  # noqa: E402
from tests.test_trust import memorised  # noqa: E402,F401  (the fixture: a tiny dataset trained many passes)


@pytest.fixture(scope="session")
def qapp_cls():
    return TuneloomApp


def test_the_plot_marks_the_best_point(qtbot):
    from app.gui.plots import TrainPlot

    plot = TrainPlot()
    qtbot.addWidget(plot)
    assert plot.best_point is None
    for step, loss in [(0, 2.0), (5, 1.0), (10, 1.2), (15, 1.0)]:
        plot.add("valid_loss", step, loss)
    plot.flush()
    assert plot.best_point == (5, 1.0)  # the first of equal ones, as the trainer keeps it
    xs, ys = plot.best_marker.getData()
    assert list(xs) == [5] and list(ys) == [1.0]


def test_the_train_page_says_the_best_step_early_stop_and_memorising(memorised, qtbot, tmp_path, monkeypatch):
    from PySide6.QtCore import QSettings

    from app.gui.main_window import MainWindow

    monkeypatch.setenv("TUNELOOM_HOME", str(tmp_path / "home"))
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    run, res, ev = memorised
    w.train_page._done(res)
    text = w.train_page.status.text()
    assert f"Best step: {res['best_step']}" in text and f"Stopped early at step {res['stopped_early']}" in text
    assert "started to memorise" in text
    # the memorising warning, as the run log on the Train page shows it
    warning = next(t for lvl, t in ev.logs if lvl == "warning" and "memorise" in t)
    w.train_page._log_line("warning", warning)
    assert "memorise" in w.train_page.log.toPlainText()
