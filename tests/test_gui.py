"""The window: the whole flow on the demo model, menus, step states, settings, Dock drops (offscreen, pytest-qt)."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QEvent, QSettings, Qt  # noqa: E402
from PySide6.QtGui import QAction, QFileOpenEvent, QKeySequence  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from app.gui.main import TuneloomApp, connect_window  # noqa: E402
from app.gui.main_window import MainWindow  # noqa: E402
from app.gui.testing import simulate_drop  # noqa: E402
from core.paths import demo_data_dir, demo_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def qapp_cls():
    """The app's own QApplication: it receives the QFileOpenEvents of Dock drops."""
    return TuneloomApp


def make_window(qtbot, settings_file: Path) -> MainWindow:
    settings = QSettings(str(settings_file), QSettings.Format.IniFormat)
    w = MainWindow(settings=settings)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.model_dir is not None, timeout=30000)  # the demo model, checked off-thread
    return w


@pytest.fixture
def window(qtbot, tmp_path):
    return make_window(qtbot, tmp_path / "settings.ini")


def states(w):
    return {s: (w.steps.state(i), w.steps.item(i).toolTip()) for i, s in enumerate(["Model", "Data", "Train", "Try",
                                                                                        "Export"])}


def test_whole_flow_train_try_export(window, qtbot):
    w = window
    assert w.model_dir == demo_model_dir()  # the demo model is the default
    st = states(w)
    assert st["Model"][0] == "done"
    assert st["Train"] == ("blocked", "Blocked: add a dataset with usable examples first")
    assert st["Try"] == ("blocked", "Blocked: train a model first")

    entered, dropped = simulate_drop(w.data_page.drop, [demo_data_dir() / "train.jsonl"])
    assert entered and dropped
    qtbot.waitUntil(lambda: w.dataset is not None and not w.jobs["data"].running, timeout=30000)
    assert "320" in w.data_page.summary.text() and w.data_page.problems.topLevelItemCount() == 0
    qtbot.waitUntil(lambda: "Describe the" in w.data_page.preview.toPlainText(), timeout=5000)
    st = states(w)
    assert st["Data"][0] == "done" and st["Train"][0] == "ready"
    assert "320" in w.steps.item(1).data(Qt.ItemDataRole.UserRole + 2)  # the line under "Data"

    w.train_page.set_preset("quick")
    w.train_page.iters.setValue(40)
    w.train_page.option("lr").setValue(1e-3)
    qtbot.waitUntil(w.train_page.start_btn.isEnabled, timeout=30000)
    qtbot.mouseClick(w.train_page.start_btn, Qt.MouseButton.LeftButton)
    job = w.jobs["train"]
    assert w.steps.state(2) == "busy"
    with qtbot.waitSignal(job.ended, timeout=240000):
        pass
    xs, ys = w.train_page.plot.train
    assert xs == list(range(1, 41))  # the live curve got every step
    vx, vy = w.train_page.plot.valid
    assert vx[0] == 0 and vx[-1] == 40 and vy[-1] < vy[0]  # and it learned (single steps are noisy)
    assert "Done" in w.train_page.status.text()
    assert (w.run_dir / "adapters.safetensors").exists()
    st = states(w)
    assert st["Train"][0] == "done" and st["Try"][0] == "ready" and st["Export"][0] == "ready"
    qtbot.waitUntil(lambda: w.runs_list.count() >= 1, timeout=10000)  # the history is read from disk
    run = w.run_dir
    w.run_dir = None
    w.runs_list.itemClicked.emit(w.runs_list.item(0))  # a past run: Try and Export use it (and its model)
    assert w.run_dir == run and w.model_dir == demo_model_dir() and states(w)["Try"][0] == "ready"

    w.try_page.prompt.setText("Describe the blue kettle in structured format.")
    qtbot.mouseClick(w.try_page.ask_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.try_page.tuned_out.toPlainText() not in ("...", ""), timeout=60000)
    # both answers stream; compare them once the turn has ended (mid-stream both may read '{"')
    qtbot.waitUntil(lambda: w.try_page.slots["try"].state == "idle", timeout=120000)  # ended: last chunk shown
    assert w.try_page.base_out.toPlainText() != w.try_page.tuned_out.toPlainText()

    # the Export page's own tests cover Ollama; here the GGUF of this run, from the window
    from PySide6.QtWidgets import QPushButton

    gguf_only = w.findChild(QPushButton, "export.gguf_only")
    qtbot.waitUntil(gguf_only.isEnabled, timeout=10000)
    qtbot.mouseClick(gguf_only, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(w.jobs["export"].ended, timeout=180000):
        pass
    ggufs = list((w.run_dir / "exports").glob("*.gguf"))
    assert ggufs and ggufs[0].stat().st_size > 1000, w.export_page.result.text()
    assert states(w)["Export"][0] == "done"


def test_stop_cancels_training(window, qtbot):
    w = window
    w.load_data([demo_data_dir()])
    qtbot.waitUntil(lambda: w.dataset is not None, timeout=30000)
    w.train_page.iters.setValue(5000)
    # Start is enabled once the data step has finished reading (a click on a disabled button does nothing)
    qtbot.waitUntil(w.train_page.start_btn.isEnabled, timeout=30000)
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
    qtbot.waitUntil(lambda: window.dataset is not None and not window.jobs["data"].running, timeout=30000)
    assert window.data_page.problems.topLevelItemCount() == 1
    assert states(window)["Data"] == ("done", "Done: 1 usable example, 1 with problems")
    item = window.data_page.problems.topLevelItem(0)
    assert (item.text(0), item.text(1)) == ("bad.jsonl", "2")
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\x00\xff" * 100)
    window.load_data([junk])
    qtbot.waitUntil(lambda: "Cannot use" in window.data_page.summary.text() and not window.jobs["data"].running,
                    timeout=30000)
    assert window.dataset is None and states(window)["Train"][0] == "blocked"


def test_menus_follow_platform_roles(window):
    w = window
    titles = [a.text().replace("&", "") for a in w.menuBar().actions()]
    assert titles == ["File", "Window", "Help"]
    a = w.actions_
    R = QAction.MenuRole
    assert a["settings"].menuRole() == R.PreferencesRole  # macOS: app menu > Settings...
    assert a["about"].menuRole() == R.AboutRole  # macOS: app menu > About Tuneloom
    assert a["quit"].menuRole() == R.QuitRole
    assert a["open_dataset"].text() == "Open Dataset..."
    assert a["open_dataset"].shortcut() == QKeySequence(QKeySequence.StandardKey.Open)
    a["step_train"].trigger()
    assert w.pages.currentWidget() is w.train_page


def test_settings_dialog_and_persistence(qtbot, tmp_path):
    ini = tmp_path / "s.ini"
    w = make_window(qtbot, ini)
    w.resize(780, 620)  # the offscreen screen is 800 x 800: restoreGeometry keeps windows on it
    size = (w.width(), w.height())
    assert size[1] == 620
    w.load_data([demo_data_dir() / "train.jsonl"])
    qtbot.waitUntil(lambda: w.data_report is not None, timeout=30000)
    # the trainer's split (core.data.train_valid_test): 10% of 320 kept for the test, 10% of the rest held out
    assert "<b>259</b> to train on, <b>29</b> to check progress" in w.data_page.summary.text()
    assert "<b>32</b> for the final test" in w.data_page.summary.text()
    dlg = w.open_settings()
    dlg.valid_pct.setValue(25)
    dlg.max_len.setValue(320)
    dlg.accept()
    assert w.data_page.max_len.value() == 320
    qtbot.waitUntil(lambda: w.data_report is not None and w.data_report.n_valid == 72, timeout=30000)
    assert "<b>216</b> to train on" in w.data_page.summary.text()  # reloaded with the new split
    w.train_page.iters.setValue(77)
    w.data_page.training_toggle.setChecked(True)
    w.steps.setCurrentRow(2)
    w.close()

    w2 = make_window(qtbot, ini)
    assert (w2.width(), w2.height()) == size
    assert w2.steps.currentRow() == 2 and w2.pages.currentWidget() is w2.train_page
    assert w2.train_page.iters.value() == 77
    assert w2.data_page.max_len.value() == 320
    assert w2.data_page.training_toggle.isChecked()
    assert w2.model_dir == demo_model_dir()
    # the last dataset comes back, and so does the validation share
    qtbot.waitUntil(lambda: w2.data_report is not None, timeout=30000)
    assert w2.data_paths == [demo_data_dir() / "train.jsonl"] and w2.data_report.n_valid == 72


def test_dock_drop_arrives_as_file_open_event(window, qtbot, qapp):
    """On macOS a file dropped on the Dock icon reaches the QApplication as a QFileOpenEvent."""
    assert isinstance(qapp, TuneloomApp)
    connect_window(qapp, window)
    QApplication.postEvent(qapp, QFileOpenEvent(str(demo_data_dir() / "valid.jsonl")))
    qtbot.waitUntil(lambda: window.data_report is not None, timeout=30000)
    assert window.data_paths == [demo_data_dir() / "valid.jsonl"]
    assert window.pages.currentWidget() is window.data_page
    assert "40 examples" in window.data_page.summary.text()
    qapp.detach(window.open_paths)


def test_file_open_events_before_a_window_are_kept(qapp, qtbot):
    got = []
    qapp.pending_files.clear()
    QApplication.sendEvent(qapp, QFileOpenEvent(str(demo_data_dir() / "train.jsonl")))
    QApplication.sendEvent(qapp, QFileOpenEvent(str(demo_data_dir() / "valid.jsonl")))
    qtbot.wait(250)
    assert qapp.pending_files == [demo_data_dir() / "train.jsonl", demo_data_dir() / "valid.jsonl"]
    qapp.attach(got.append)  # a window connecting later gets them
    assert got == [[demo_data_dir() / "train.jsonl", demo_data_dir() / "valid.jsonl"]]
    qapp.detach(got.append)
    assert QEvent.Type.FileOpen  # the event type the app handles


def test_train_plot_survives_many_repaints(qtbot):
    """PySide6 6.12.0 + pyqtgraph crashed after a few thousand repaints (refcount bug on None): the loss plot
    the Train page shows (plots.TrainPlot), repainted as a long run feeds it."""
    from app.gui.plots import TrainPlot

    plot = TrainPlot()
    qtbot.addWidget(plot)
    plot.show()
    for i in range(3000):
        plot.add("train_loss", i, 1.0 / (i + 1))
        if i % 100 == 0:
            plot.add("valid_loss", i, 1.0 / (i + 2))
            plot.flush()
        plot.repaint()
        if i % 50 == 0:
            QApplication.processEvents()
    plot.flush()
    assert plot.train_s.n == 3000 and plot.valid_s.n == 30


def test_the_window_fills_the_kernel_cache_after_it_shows_but_not_when_it_quits_after_paint(tmp_path):
    """run_gui's start-up hook: once the window is up, the K-quant kernel cache is filled in the
    background (core.export.kquants.fill_cache_in_background); a --quit-after-paint start leaves it.
    In a process of its own: run_gui runs the application's event loop to its end (aboutToQuit)."""
    import subprocess
    import sys

    code = """if True:
        import sys
        from PySide6.QtCore import QTimer
        from PySide6.QtWidgets import QWidget
        import app.gui.main as gui_main
        import app.gui.main_window as main_window
        from core.export import kquants

        class LightWindow(QWidget):  # (the hook, not the pages, is under test)
            def open_paths(self, files):
                pass

        fills = []

        def fill():
            fills.append(True)
            QTimer.singleShot(0, gui_main.QApplication.instance().quit)

        main_window.MainWindow = LightWindow
        gui_main.KERNEL_FILL_DELAY_MS = 50
        kquants.fill_cache_in_background = fill
        quit_after_paint = sys.argv[1] == "quit-after-paint"
        if not quit_after_paint:  # a hook that never fires fails below instead of hanging
            QTimer.singleShot(120_000, lambda: gui_main.QApplication.instance().exit(7))
        code = gui_main.run_gui(["tuneloom"], quit_after_paint=quit_after_paint)
        print("fills", len(fills), "exit", code)
    """
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "TUNELOOM_HOME": str(tmp_path), "QT_QPA_PLATFORM": "offscreen",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    seen = {}
    for how in ("window", "quit-after-paint"):
        p = subprocess.run([sys.executable, "-c", code, how], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        seen[how] = p.stdout.strip().splitlines()[-1]
    assert seen == {"window": "fills 1 exit 0", "quit-after-paint": "fills 0 exit 0"}
