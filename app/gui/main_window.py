"""The main window: five steps in a sidebar (Model, Data, Train, Try, Export), one page each, and
the run history.

The window only assembles: the Qt-free session (app.session), the job slots (app.gui.workers),
the pages (app.gui.pages.*, each owning its controller), the menus and the settings. What the
pages share lives in the session; the step list is drawn from ``step_states(session)``.
"""
from __future__ import annotations

import gc
import sys
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QLabel, QMainWindow, QMessageBox, QPushButton, QSplitter, QStackedWidget, QVBoxLayout,
                               QWidget)

from app.gui import jobs as gj
from app.gui.pages.base import PAINT_FIRST_MS, AppContext
from app.gui.pages.data import DataPage
from app.gui.pages.export import ExportPage
from app.gui.pages.history import HistoryPage, SidebarRuns
from app.gui.pages.model import ModelPage
from app.gui.pages.train import TrainPage
from app.gui.pages.try_ import TryPage
from app.gui.settings_dialog import SettingsDialog
from app.gui.widgets import DropOverlay, StepList, acceptable, dropped_paths
from app.gui.workers import JobSlots
from app.session import DATA, DEMO_NAME, MODEL, STEPS, Session, step_states  # noqa: F401 (re-exported)

HISTORY = len(STEPS)  # the page after the five steps
__all__ = ["MainWindow", "STEPS", "DEMO_NAME", "PAINT_FIRST_MS"]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tuneloom")
    except Exception:  # noqa: BLE001 - not installed: a source checkout
        return "0.1.0"


class _Jobs:
    """``window.jobs[kind]``: the latest Job of a slot (read-only, for scripts and tests)."""

    def __init__(self, slots: JobSlots):
        self._slots = slots

    def __getitem__(self, kind):
        job = self._slots.jobs().get(kind)
        if job is None:
            raise KeyError(kind)
        return job

    def get(self, kind, default=None):
        return self._slots.jobs().get(kind, default)

    def values(self):
        return self._slots.jobs().values()

    def items(self):
        return self._slots.jobs().items()


class MainWindow(QMainWindow):
    def __init__(self, settings: QSettings | None = None):
        super().__init__()
        # A job thread running Python holds the GIL for up to the switch interval (5 ms by default)
        # each time the GUI thread asks for it, and painting asks many times (every Python paint or
        # event override): 2 ms keeps a busy worker from stretching one repaint into a visible stall.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.002))
        self.setWindowTitle("Tuneloom")
        self.setAcceptDrops(True)
        self.settings = settings or QSettings("Tuneloom", "Tuneloom")
        self.session = Session()
        self.slots = JobSlots(self, self.session)
        self.jobs = _Jobs(self.slots)
        self.ctx = AppContext(self.session, self.slots, self.settings, self,
                              status=lambda text, ms=0: self.statusBar().showMessage(text, ms),
                              go_to=self.go_to, open_paths=self.open_paths)

        self.steps = StepList(STEPS)
        self.pages = QStackedWidget()
        self.model_page, self.data_page = ModelPage(self.ctx), DataPage(self.ctx)
        self.train_page, self.try_page, self.export_page = TrainPage(self.ctx), TryPage(self.ctx), ExportPage(self.ctx)
        self.history_page = HistoryPage(self.ctx)
        self.all_pages = [self.model_page, self.data_page, self.train_page, self.try_page, self.export_page,
                          self.history_page]
        for p in self.all_pages:
            self.pages.addWidget(p)
            self.ctx.pages[p.key] = p
            if hasattr(p, "session_changed"):
                self.session.changed.connect(p.session_changed)
        self.session.changed.connect(lambda _names: self.update_steps())
        self.data_page.max_len.valueChanged.connect(self.train_page.max_len_changed)

        # -- sidebar: steps, then past runs
        self.runs_list = SidebarRuns(self.history_page)
        self.history_btn = QPushButton("All runs...")
        self.history_btn.setObjectName("sidebar.history")
        self.history_btn.setToolTip("The run history: curves, configs, resume, compare (Ctrl+Y).")
        self.history_btn.clicked.connect(lambda: self.go_to(HISTORY))
        side = QWidget()
        side.setMinimumWidth(224)  # a run's default name (20261206-092729-run) whole in Past runs
        side.setMaximumWidth(260)
        sl = QVBoxLayout(side)
        sl.setContentsMargins(6, 10, 0, 6)
        sl.addWidget(self.steps)
        sl.addSpacing(8)
        sl.addWidget(QLabel("<b>Past runs</b>"))
        sl.addWidget(self.runs_list, 1)
        sl.addWidget(self.history_btn)
        self.splitter = QSplitter()
        self.splitter.addWidget(side)
        self.splitter.addWidget(self.pages)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        self.setCentralWidget(self.splitter)
        self.overlay = DropOverlay(self.splitter)
        self.steps.currentRowChanged.connect(lambda row: row >= 0 and self.pages.setCurrentIndex(row))
        self.actions_: dict[str, QAction] = {}
        self._build_menus()
        self.statusBar().showMessage("Ready")
        self._restore_settings()

        self.model_page.load_catalog()
        self.model_page.restore_model()
        self.history_page.refresh()
        self.update_steps()
        self.data_page.reopen_last()
        gc.freeze()  # Qt, pyqtgraph and core are here for good: keep them out of every collection

    # -- navigation ---------------------------------------------------------------
    def go_to(self, index: int):
        if index < len(STEPS):
            self.steps.setCurrentRow(index)
            self.pages.setCurrentIndex(index)
        else:
            self.steps.setCurrentRow(-1)
            self.pages.setCurrentIndex(index)

    # -- the session, for scripts and tests (read-only views) -------------------------
    model_dir = property(lambda self: self.session.model_dir)
    model_name = property(lambda self: self.session.model_name)
    model_checking = property(lambda self: self.session.model_checking)
    dataset = property(lambda self: self.session.dataset)
    data_report = property(lambda self: self.session.data_report)
    token_report = property(lambda self: self.session.token_report)
    data_paths = property(lambda self: self.session.data_paths)

    @property
    def run_dir(self) -> Path | None:
        return self.session.run_dir

    @run_dir.setter
    def run_dir(self, value):
        self.session.update(run_dir=value)

    # the pages' controllers the menus and the tests call on the window
    def load_data(self, files, switch: bool = True):
        self.data_page.load_data(files, switch)

    def load_sample_data(self):
        self.data_page.load_sample_data()

    # -- settings ---------------------------------------------------------------
    def _restore_settings(self):
        s = self.settings
        geo = s.value("geometry")
        if isinstance(geo, QByteArray) and not geo.isEmpty():
            self.restoreGeometry(geo)
        else:
            self.resize(1180, 800)
        split = s.value("window/splitter")
        if isinstance(split, QByteArray) and not split.isEmpty():
            self.splitter.restoreState(split)
        else:
            self.splitter.setSizes([210, 970])
        for p in self.all_pages:
            p.restore_settings()
        page = self.train_page.int_setting("window/page", -1)
        if page < 0:
            page = self.train_page.int_setting("window/step", 0)
        self.go_to(min(max(page, 0), HISTORY))

    def save_settings(self):
        s = self.settings
        s.setValue("geometry", self.saveGeometry())
        s.setValue("window/splitter", self.splitter.saveState())
        s.setValue("window/step", max(0, self.steps.currentRow()))
        s.setValue("window/page", self.pages.currentIndex())
        for p in self.all_pages:
            p.save_settings()
        s.sync()

    def valid_fraction(self) -> float:
        return self.data_page.valid_fraction()

    def open_settings(self) -> SettingsDialog:
        """Settings... (the app menu's Preferences on macOS). Non-modal to the event loop: returns the dialog."""
        before = self.valid_fraction()
        dlg = SettingsDialog(self.settings, self)

        def done(result):
            if result:
                self.data_page.max_len.setValue(self.data_page.int_setting("data/max_seq_len", 512))
                if self.valid_fraction() != before and self.session.data_paths:
                    self.load_data(self.session.data_paths, switch=False)
            dlg.deleteLater()

        dlg.finished.connect(done)
        dlg.open()
        return dlg

    # -- chrome ---------------------------------------------------------------
    def _act(self, menu, key: str, text: str, slot, shortcut=None, role=None) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        if role is not None:
            a.setMenuRole(role)
        a.triggered.connect(slot)
        menu.addAction(a)
        self.actions_[key] = a
        return a

    def _build_menus(self):
        """Menus as each platform expects them. On macOS Qt moves About, Settings... and Quit into the
        application menu by their roles; elsewhere they stay in File and Help."""
        R = QAction.MenuRole
        mac = sys.platform == "darwin"
        f = self.menuBar().addMenu("&File")
        self._act(f, "open_dataset", "Open Dataset...", self.data_page._open, QKeySequence.StandardKey.Open)
        self._act(f, "open_dataset_folder", "Open Dataset Folder...", self.data_page._open_dir)
        self._act(f, "sample_data", "Use the Sample Dataset", self.load_sample_data)
        f.addSeparator()
        self._act(f, "open_model", "Open Model Folder...", self.model_page._open, "Ctrl+Shift+O")
        self._act(f, "add_model", "Add Model by Hugging Face Id...", self.model_page.ask_hub_id)
        f.addSeparator()
        self._act(f, "settings", "Settings..." if not mac else "Settings…", self.open_settings,
                  QKeySequence.StandardKey.Preferences if mac else "Ctrl+,", R.PreferencesRole)
        f.addSeparator()
        self._act(f, "quit", "Quit Tuneloom" if mac else "&Quit", self.close, QKeySequence.StandardKey.Quit,
                  R.QuitRole)
        w = self.menuBar().addMenu("&Window")
        self._act(w, "minimize", "Minimize", self.showMinimized, "Ctrl+M")
        self._act(w, "zoom", "Zoom", lambda: self.showNormal() if self.isMaximized() else self.showMaximized())
        w.addSeparator()
        for i, s in enumerate(STEPS):
            self._act(w, f"step_{s.lower()}", f"{i + 1}. {s}", lambda _=False, i=i: self.go_to(i), f"Ctrl+{i + 1}")
        self._act(w, "history", "Run History", lambda: self.go_to(HISTORY), "Ctrl+Y")
        h = self.menuBar().addMenu("&Help")
        self._act(h, "help", "Tuneloom Help", self.show_help, QKeySequence.StandardKey.HelpContents)
        self._act(h, "formats", "Dataset Formats", self.show_formats)
        self._act(h, "show_logs", "Show Logs", self.show_logs)
        h.addSeparator()
        self._act(h, "about", "About Tuneloom", self.show_about, role=R.AboutRole)
        self._act(h, "about_qt", "About Qt", lambda: QMessageBox.aboutQt(self), role=R.AboutQtRole)

    def show_logs(self):
        """Help > Show Logs: the folder with Tuneloom's log files, in the file manager."""
        try:
            from app import logs  # written by the logging work; imported here so the window never needs it
        except ImportError:
            self.statusBar().showMessage("Logs are not available in this version.", 6000)
            return
        if not logs.show_logs():
            self.statusBar().showMessage(f"Tuneloom's logs are in {logs.log_dir()}", 10000)

    def show_about(self):
        QMessageBox.about(self, "About Tuneloom",
                          f"<h3>Tuneloom {_version()}</h3><p>Fine-tune a small chat model on your own examples "
                          "with MLX LoRA, try it next to the original, and run it in Ollama.</p>"
                          "<p>Apache-2.0 licence.</p>")

    def show_help(self):
        QMessageBox.information(self, "Tuneloom Help", (
            "<ol><li><b>Model</b>: keep the bundled demo model, or download a catalog model.</li>"
            "<li><b>Data</b>: drop a file of example conversations. Tuneloom shows what it understood and every "
            "problem with file and line.</li>"
            "<li><b>Train</b>: pick a preset, start, watch the loss fall; pause, resume or stop at any time.</li>"
            "<li><b>Try</b>: ask both models the same question.</li>"
            "<li><b>Export</b>: one GGUF file and an Ollama Modelfile.</li></ol>"
            "<p>Every run is kept on disk: <b>Window > Run History</b> lists them, resumes, compares.</p>"))

    def show_formats(self):
        QMessageBox.information(self, "Dataset formats", (
            "<p>One example per line (JSONL), a JSON array, or a table (CSV/TSV) with one of:</p><ul>"
            "<li><code>messages</code>: [{role, content}, ...] (system / user / assistant)</li>"
            "<li><code>conversations</code>: ShareGPT [{from, value}, ...]</li>"
            "<li><code>instruction</code>, <code>input</code>, <code>output</code> (Alpaca)</li>"
            "<li><code>prompt</code> and <code>completion</code>, or <code>question</code> and <code>answer</code></li>"
            "<li><code>text</code>, or a .txt file with blank lines between documents</li></ul>"
            "<p>A folder with train and valid files is used as the split.</p>"))

    # -- step states ------------------------------------------------------------
    def step_states(self) -> dict[str, tuple[str, str, str]]:
        return step_states(self.session)

    def update_steps(self):
        for i, (state, detail, tip) in enumerate(step_states(self.session).values()):
            self.steps.set_state(i, state, detail, tip)
        self.steps.viewport().update()

    # -- drops anywhere on the window, and files opened through the system --------------
    def _drag_text(self, ps: list[Path]) -> str:
        if any(gj.is_model_folder(p) for p in ps):
            return "Drop to use this model folder"
        return "Drop to add these examples"

    def dragEnterEvent(self, event):
        ps = dropped_paths(event.mimeData())
        if acceptable(ps):
            event.acceptProposedAction()
            self.overlay.show_over(self._drag_text(ps))
        else:
            event.ignore()

    def dragMoveEvent(self, event):
        if acceptable(dropped_paths(event.mimeData())):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragLeaveEvent(self, event):
        self.overlay.hide()

    def dropEvent(self, event):
        self.overlay.hide()
        ps = dropped_paths(event.mimeData())
        if acceptable(ps):
            event.acceptProposedAction()
            self.open_paths(ps)
        else:
            event.ignore()

    def open_paths(self, ps: list):
        """Files and folders from a drop, the Dock or the command line: a folder holding config.json
        is a model, everything else is data (core.data says what it cannot read)."""
        ps = [Path(p) for p in ps]
        models = [p for p in ps if gj.is_model_folder(p)]
        data = [p for p in ps if p not in models]
        if models:
            self.go_to(MODEL)
            self.model_page.set_model(models[0])
        if data:
            self.data_page.load_data(data, switch=not models)
        self.raise_()
        self.activateWindow()

    def closeEvent(self, event):
        for p in self.all_pages:
            if not p.close_request():
                event.ignore()
                return
        self.slots.stop_all()
        self.save_settings()
        super().closeEvent(event)
