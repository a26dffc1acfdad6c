"""The main window: five steps in a sidebar (Model, Data, Train, Try, Export), one page each.

The window holds the state the steps share (the chosen model, the dataset, the run) and
starts the jobs; every job runs on a worker thread (:class:`app.gui.workers.Job`) and the
pages only show what the jobs report.
"""
from __future__ import annotations

import gc
import html
import sys
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                               QListWidgetItem, QMainWindow, QMessageBox, QPlainTextEdit, QProgressBar, QPushButton,
                               QSpinBox, QSplitter, QStackedWidget, QVBoxLayout, QWidget)

from app.gui import jobs as gj
from app.gui.data_page import DataPage
from app.gui.model_page import ModelPage
from app.gui.settings_dialog import SettingsDialog, read_bool
from app.gui.widgets import DropOverlay, LossPlot, StepList, acceptable, dropped_paths
from app.gui.workers import Job
from core import paths, runs
from core.events import Cancelled, TuneloomError

STEPS = ["Model", "Data", "Train", "Try", "Export"]
MODEL, DATA, TRAIN, TRY, EXPORT = range(5)
DEMO_NAME = "Tuneloom demo model (bundled)"
# Jobs that change a page's layout start this much later, so the page repaints before they compete for the GIL.
PAINT_FIRST_MS = 60


def _error_text(exc) -> str:
    return exc.user_message() if isinstance(exc, TuneloomError) else f"{type(exc).__name__}: {exc}"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tuneloom")
    except Exception:  # noqa: BLE001 - not installed: a source checkout
        return "0.1.0"


class Page(QWidget):
    def __init__(self, window: "MainWindow", title: str, blurb: str):
        super().__init__()
        self.win = window
        self.layout_ = QVBoxLayout(self)
        head = QLabel(f"<h2>{title}</h2><p>{blurb}</p>")
        head.setWordWrap(True)
        self.layout_.addWidget(head)


class TrainPage(Page):
    def __init__(self, win):
        super().__init__(win, "3. Train", "Teach the model your examples. Watch the loss fall: lower means the "
                         "model predicts your answers better. Stop at any time; nothing is lost.")
        form = QFormLayout()
        self.iters = QSpinBox()
        self.iters.setRange(1, 100000)
        self.iters.setValue(160)
        self.iters.setToolTip("How many training steps to take.")
        self.lr = QComboBox()
        self.lr.addItems(["2e-3", "1e-3", "2e-4", "1e-4", "5e-5"])
        self.lr.setToolTip("Learning rate: how big each step is. Small models take larger steps.")
        self.rank = QSpinBox()
        self.rank.setRange(1, 256)
        self.rank.setValue(8)
        self.rank.setToolTip("LoRA rank: how much the model can change. 8 is plenty for most tasks.")
        self.skip_invalid = QCheckBox("Skip examples with problems")
        form.addRow("Steps", self.iters)
        form.addRow("Learning rate", self.lr)
        form.addRow("Rank", self.rank)
        form.addRow("", self.skip_invalid)
        self.start_btn = QPushButton("Start training")
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setEnabled(False)
        row = QHBoxLayout()
        row.addWidget(self.start_btn)
        row.addWidget(self.stop_btn)
        row.addStretch(1)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.plot = LossPlot()
        self.layout_.addLayout(form)
        self.layout_.addLayout(row)
        self.layout_.addWidget(self.progress)
        self.layout_.addWidget(self.status)
        self.layout_.addWidget(self.plot, 1)
        self.start_btn.clicked.connect(win.start_training)
        self.stop_btn.clicked.connect(win.stop_training)


class TryPage(Page):
    def __init__(self, win):
        super().__init__(win, "4. Try it", "Ask something and compare the original model with your fine-tune.")
        self.prompt = QLineEdit("Describe the blue kettle in structured format.")
        self.ask_btn = QPushButton("Ask both models")
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setEnabled(False)
        self.base_out = QPlainTextEdit()
        self.tuned_out = QPlainTextEdit()
        for w in (self.base_out, self.tuned_out):
            w.setReadOnly(True)
            w.setAcceptDrops(False)
        row = QHBoxLayout()
        row.addWidget(self.prompt, 1)
        row.addWidget(self.ask_btn)
        row.addWidget(self.stop_btn)
        self.layout_.addLayout(row)
        self.layout_.addWidget(QLabel("<b>Original model</b>"))
        self.layout_.addWidget(self.base_out)
        self.layout_.addWidget(QLabel("<b>Your fine-tuned model</b>"))
        self.layout_.addWidget(self.tuned_out)
        self.ask_btn.clicked.connect(win.ask)
        self.stop_btn.clicked.connect(win.stop_asking)
        self.prompt.returnPressed.connect(win.ask)


class ExportPage(Page):
    def __init__(self, win):
        super().__init__(win, "5. Export", "Write one file with your fine-tuned model (GGUF) and a Modelfile for "
                         "Ollama. If Ollama is running, the model is registered too.")
        form = QFormLayout()
        self.quant = QComboBox()
        self.quant.addItems(["f16", "q8_0"])
        self.quant.setToolTip("f16 keeps full quality; q8_0 is half the size with a small quality loss.")
        self.name = QLineEdit("my-tuneloom-model")
        form.addRow("Precision", self.quant)
        form.addRow("Ollama name", self.name)
        self.export_btn = QPushButton("Export")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        row = QHBoxLayout()
        row.addWidget(self.export_btn)
        row.addWidget(self.cancel_btn)
        row.addStretch(1)
        self.progress = QProgressBar()
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.layout_.addLayout(form)
        self.layout_.addLayout(row)
        self.layout_.addWidget(self.progress)
        self.layout_.addWidget(self.result)
        self.layout_.addStretch(1)
        self.export_btn.clicked.connect(win.export)
        self.cancel_btn.clicked.connect(win.cancel_export)


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
        self.model_dir: Path | None = None
        self.model_name: str | None = None
        self.model_check = None
        self.model_checking: Path | None = None
        self.data_paths: list[Path] = []
        self.dataset = None
        self.data_report: gj.DataReport | None = None
        self.token_report: gj.TokenReport | None = None
        self.run_dir: Path | None = None
        self.jobs: dict[str, Job] = {}

        # -- sidebar: steps and past runs
        self.steps = StepList(STEPS)
        self.runs_list = QListWidget()
        self.runs_list.setToolTip("Training runs kept on disk; click one to try or export it.")
        side = QWidget()
        side.setMinimumWidth(190)
        side.setMaximumWidth(260)
        sl = QVBoxLayout(side)
        sl.setContentsMargins(6, 10, 0, 6)
        sl.addWidget(self.steps)
        sl.addSpacing(8)
        sl.addWidget(QLabel("<b>Past runs</b>"))
        sl.addWidget(self.runs_list, 1)

        self.pages = QStackedWidget()
        self.model_page, self.data_page = ModelPage(self), DataPage(self)
        self.train_page, self.try_page, self.export_page = TrainPage(self), TryPage(self), ExportPage(self)
        for p in (self.model_page, self.data_page, self.train_page, self.try_page, self.export_page):
            self.pages.addWidget(p)
        self.splitter = QSplitter()
        self.splitter.addWidget(side)
        self.splitter.addWidget(self.pages)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        self.setCentralWidget(self.splitter)
        self.overlay = DropOverlay(self.splitter)
        self.steps.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.runs_list.itemClicked.connect(self._pick_run)
        self.actions_: dict[str, QAction] = {}
        self._build_menus()
        self.statusBar().showMessage("Ready")
        self._restore_settings()

        self.model_page.load_catalog()
        saved = self.settings.value("model")
        if saved and Path(saved).is_dir():
            self.set_model(Path(saved), self.settings.value("model_name") or None)
        else:
            self.use_demo_model()
        self.refresh_runs()
        self.update_steps()
        last = self.settings.value("data/paths", [])
        last = [last] if isinstance(last, str) else list(last or [])
        if last and read_bool(self.settings, "data/reopen", True) and all(Path(p).exists() for p in last):
            self.load_data([Path(p) for p in last], switch=False)
        gc.freeze()  # Qt, pyqtgraph and core are here for good: keep them out of every collection

    # -- settings ---------------------------------------------------------------
    def _int_setting(self, key: str, default: int) -> int:
        try:
            return int(self.settings.value(key, default))
        except (TypeError, ValueError):  # a settings file edited by hand, or from another version
            return default

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
        self.steps.setCurrentRow(min(max(self._int_setting("window/step", 0), 0), len(STEPS) - 1))
        self.data_page.max_len.setValue(self._int_setting("data/max_seq_len", 512))
        self.data_page.training_toggle.setChecked(read_bool(s, "data/show_training_text", False))
        tp = self.train_page
        tp.iters.setValue(self._int_setting("train/iters", tp.iters.value()))
        lr = str(s.value("train/lr", tp.lr.currentText()))
        if tp.lr.findText(lr) >= 0:
            tp.lr.setCurrentText(lr)
        tp.rank.setValue(self._int_setting("train/rank", tp.rank.value()))
        tp.skip_invalid.setChecked(read_bool(s, "train/skip_invalid", False))
        ep = self.export_page
        quant = str(s.value("export/quant", ep.quant.currentText()))
        if ep.quant.findText(quant) >= 0:
            ep.quant.setCurrentText(quant)
        ep.name.setText(str(s.value("export/name", ep.name.text())))

    def save_settings(self):
        s = self.settings
        s.setValue("geometry", self.saveGeometry())
        s.setValue("window/splitter", self.splitter.saveState())
        s.setValue("window/step", self.steps.currentRow())
        s.setValue("data/max_seq_len", self.data_page.max_len.value())
        s.setValue("data/show_training_text", self.data_page.training_toggle.isChecked())
        tp, ep = self.train_page, self.export_page
        s.setValue("train/iters", tp.iters.value())
        s.setValue("train/lr", tp.lr.currentText())
        s.setValue("train/rank", tp.rank.value())
        s.setValue("train/skip_invalid", tp.skip_invalid.isChecked())
        s.setValue("export/quant", ep.quant.currentText())
        s.setValue("export/name", ep.name.text())
        s.sync()

    def valid_fraction(self) -> float:
        try:
            return min(0.5, max(0.01, float(self.settings.value("data/valid_fraction", 0.1))))
        except (TypeError, ValueError):
            return 0.1

    def open_settings(self) -> SettingsDialog:
        """Settings... (the app menu's Preferences on macOS). Non-modal to the event loop: returns the dialog."""
        before = self.valid_fraction()
        dlg = SettingsDialog(self.settings, self)

        def done(result):
            if result:
                self.data_page.max_len.setValue(self._int_setting("data/max_seq_len", 512))
                if self.valid_fraction() != before and self.data_paths:
                    self.load_data(self.data_paths, switch=False)
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
            self._act(w, f"step_{s.lower()}", f"{i + 1}. {s}", lambda _=False, i=i: self.steps.setCurrentRow(i),
                      f"Ctrl+{i + 1}")
        h = self.menuBar().addMenu("&Help")
        self._act(h, "help", "Tuneloom Help", self.show_help, QKeySequence.StandardKey.HelpContents)
        self._act(h, "formats", "Dataset Formats", self.show_formats)
        h.addSeparator()
        self._act(h, "about", "About Tuneloom", self.show_about, role=R.AboutRole)
        self._act(h, "about_qt", "About Qt", lambda: QMessageBox.aboutQt(self), role=R.AboutQtRole)

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
            "<li><b>Train</b>: start, watch the loss fall, stop at any time.</li>"
            "<li><b>Try</b>: ask both models the same question.</li>"
            "<li><b>Export</b>: one GGUF file and an Ollama Modelfile.</li></ol>"))

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
    def _running(self, key: str) -> bool:
        job = self.jobs.get(key)
        return job is not None and job.running

    def step_states(self) -> dict[str, tuple[str, str, str]]:
        """{step: (state, one-line detail, tooltip)}; state is done / ready / busy / blocked."""
        out: dict[str, tuple[str, str, str]] = {}
        downloading = self.model_page.downloading()
        if self.model_checking is not None:
            out["Model"] = ("busy", "checking the model...", "Checking the model folder")
        elif self.model_dir is not None:
            name = self.model_name or self.model_dir.name
            out["Model"] = ("done", name, f"Done: {name}" + (f"\nDownloading: {', '.join(downloading)}"
                                                            if downloading else ""))
        elif downloading:
            out["Model"] = ("busy", "downloading...", "Downloading " + ", ".join(downloading))
        else:
            out["Model"] = ("ready", "choose a model", "Ready: choose a model")

        ds = self.dataset
        if self._running("data"):
            out["Data"] = ("busy", "checking the files...", "Reading and checking the dataset")
        elif ds is not None and ds.records:
            probs = f", {ds.invalid:,} with problems" if ds.invalid else ""
            n = len(ds.records)
            noun = "example" if n == 1 else "examples"
            out["Data"] = ("done", f"{n:,} {noun}{probs}", f"Done: {n:,} usable {noun}{probs}")
        elif ds is not None:
            out["Data"] = ("ready", "no usable examples", "Ready: none of the examples can be used; fix the "
                           "problems or drop other files")
        else:
            out["Data"] = ("ready", "add your examples", "Ready: drop a dataset or use the sample dataset")

        trained = self.run_dir is not None and (self.run_dir / "adapters.safetensors").exists()
        if self._running("train"):
            out["Train"] = ("busy", "training...", "Training")
        elif self.model_dir is None:
            out["Train"] = ("blocked", "needs a model", "Blocked: choose a model first")
        elif ds is None or not ds.records:
            out["Train"] = ("blocked", "needs examples", "Blocked: add a dataset with usable examples first")
        elif trained:
            out["Train"] = ("done", self.run_dir.name, f"Done: run {self.run_dir.name}; you can train again")
        else:
            out["Train"] = ("ready", "ready to train", "Ready: start training")

        if trained:
            out["Try"] = ("ready", "ask both models", "Ready: compare the original and the fine-tuned model")
            exported = any((self.run_dir / "exports").glob("*.gguf")) if (self.run_dir / "exports").exists() else False
            if self._running("export"):
                out["Export"] = ("busy", "exporting...", "Exporting")
            elif exported:
                out["Export"] = ("done", "GGUF written", "Done: a GGUF file was written for this run")
            else:
                out["Export"] = ("ready", "write a GGUF", "Ready: export the fine-tuned model")
        else:
            out["Try"] = ("blocked", "needs a trained model", "Blocked: train a model first")
            out["Export"] = ("blocked", "needs a trained model", "Blocked: train a model first")
        return out

    def update_steps(self):
        for i, (state, detail, tip) in enumerate(self.step_states().values()):
            self.steps.set_state(i, state, detail, tip)
        self.steps.viewport().update()

    def refresh_runs(self):
        self.runs_list.clear()
        for r in runs.list_runs():
            item = QListWidgetItem(f"{r.name}\n{r.state}")
            item.setData(Qt.ItemDataRole.UserRole, str(r.path))
            item.setToolTip(f"{r.path}\nmodel: {r.config.get('model', '?')}")
            self.runs_list.addItem(item)

    def _pick_run(self, item):
        self.run_dir = Path(item.data(Qt.ItemDataRole.UserRole))
        self.statusBar().showMessage(f"Selected run {self.run_dir.name}")
        # an adapter only fits the model it was trained on: Try and Export use that one
        cfg = runs.read_json(self.run_dir / "config.json", {}) or {}
        base = Path(cfg["model"]) if cfg.get("model") else None
        current = self.model_dir.resolve() if self.model_dir is not None else None
        if base is not None and base.is_dir() and base.resolve() != current:
            self.set_model(base)
        self.update_steps()

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
            self.steps.setCurrentRow(MODEL)
            self.set_model(models[0])
        if data:
            self.load_data(data, switch=not models)
        self.raise_()
        self.activateWindow()

    # -- Model ----------------------------------------------------------------------
    def use_demo_model(self):
        self.set_model(paths.demo_model_dir(), DEMO_NAME)

    def set_model(self, model_dir: Path, name: str | None = None):
        """Check ``model_dir`` (off the GUI thread) and use it if it passes."""
        model_dir = Path(model_dir)
        if name is None:
            card = self.model_page.card_for_path(model_dir)
            name = card.info.name if card else (DEMO_NAME if model_dir == paths.demo_model_dir() else model_dir.name)
        self.model_checking = model_dir
        self.model_page.show_checking(model_dir, name)
        job = Job(gj.check_model, model_dir, parent=self)
        job.finished_ok.connect(lambda check, j=job: self._model_checked(j, model_dir, name, check))
        job.failed.connect(lambda exc, j=job: self._model_check_failed(j, model_dir, exc))
        job.ended.connect(lambda j=job: self._model_check_ended(j))
        self.jobs["check"] = job.start()
        self.update_steps()

    def _model_checked(self, job, model_dir: Path, name: str, check):
        if self.jobs.get("check") is not job:
            return
        if check.ok:
            self.model_dir, self.model_name, self.model_check = model_dir, name, check
            self.settings.setValue("model", str(model_dir))
            self.settings.setValue("model_name", name)
            self.statusBar().showMessage(f"Using {name}", 5000)
            if self.dataset is not None and self.dataset.records:
                self.measure_tokens()
        self.model_page.show_check(check, name, self.model_dir)

    def _model_check_failed(self, job, model_dir: Path, exc):
        if self.jobs.get("check") is job:
            self.model_page.show_check_error(model_dir, _error_text(exc))

    def _model_check_ended(self, job):
        if self.jobs.get("check") is job:
            self.model_checking = None
            self.update_steps()

    # -- Data -----------------------------------------------------------------------
    def load_sample_data(self):
        self.load_data([paths.demo_data_dir()])

    def cancel_data(self):
        for key in ("data", "tokens", "raw"):
            job = self.jobs.get(key)
            if job is not None and job.running:
                job.stop()

    def load_data(self, files: list, switch: bool = True):
        files = [Path(f) for f in files]
        if switch:
            self.steps.setCurrentRow(DATA)
        self.cancel_data()
        self.token_report = None
        self.data_page.show_loading(files)
        job = Job(gj.load_data_report, files, self.valid_fraction(), parent=self, quiet_gc=True)
        job.events.progress_changed.connect(lambda d, t, w, j=job: self._data_progress(j, d, t, w))
        job.finished_ok.connect(lambda rep, j=job: self._data_loaded(j, rep))
        job.failed.connect(lambda exc, j=job: self._data_failed(j, exc))
        job.ended.connect(lambda j=job: self._data_ended(j))
        self.jobs["data"] = job.start(delay_ms=PAINT_FIRST_MS)
        self.update_steps()

    def _data_progress(self, job, done, total, what):
        if self.jobs.get("data") is job:
            self.data_page.set_busy(what, done, total)

    def _data_loaded(self, job, report: gj.DataReport):
        if self.jobs.get("data") is not job:
            return
        self.data_report, self.dataset, self.data_paths = report, report.dataset, report.paths
        self.token_report = None
        self.settings.setValue("data/paths", [str(p) for p in report.paths])
        self.data_page.show_dataset(report)
        ds = report.dataset
        self.statusBar().showMessage(f"{len(ds.records):,} usable examples, {len(ds.issues):,} problems", 8000)
        self.measure_tokens()

    def _data_failed(self, job, exc):
        if self.jobs.get("data") is not job:
            return
        self.dataset = self.data_report = self.token_report = None
        if isinstance(exc, Cancelled):
            self.data_page.show_error("Stopped before the files were read to the end; nothing was loaded.")
        else:
            self.data_page.show_error(_error_text(exc))

    def _data_ended(self, job):
        if self.jobs.get("data") is job:
            if not self._running("tokens"):
                self.data_page.set_busy(None)
            self.update_steps()

    def measure_tokens(self):
        """Token lengths and the training text of the dataset with the chosen model's tokenizer."""
        ds = self.dataset
        job = self.jobs.get("tokens")
        if job is not None and job.running:
            job.stop()
        if ds is None or not ds.records:
            return
        if self.model_dir is None:
            self.data_page.show_tokens_pending("Token lengths appear once a model is chosen (they depend on its "
                                               "tokenizer).")
            return
        self.data_page.show_tokens_pending()
        job = Job(gj.measure_tokens, ds.records, self.model_dir, self.data_page.max_len.value(), parent=self,
                  quiet_gc=True)
        job.events.progress_changed.connect(lambda d, t, w, j=job: self._tokens_progress(j, d, t, w))
        job.finished_ok.connect(lambda rep, j=job: self._tokens_done(j, rep))
        job.failed.connect(lambda exc, j=job: self._tokens_failed(j, exc))
        job.ended.connect(lambda j=job: self._tokens_ended(j))
        self.jobs["tokens"] = job.start(delay_ms=3 * PAINT_FIRST_MS)  # after the page and its preview

    def _tokens_progress(self, job, done, total, what):
        if self.jobs.get("tokens") is job and not self._running("data"):
            self.data_page.set_busy(what, done, total)

    def _tokens_done(self, job, report):
        if self.jobs.get("tokens") is job:
            self.token_report = report
            self.data_page.show_tokens(report)

    def _tokens_failed(self, job, exc):
        if self.jobs.get("tokens") is not job:
            return
        if isinstance(exc, Cancelled):
            self.data_page.show_tokens_pending("Token measurement stopped.")
        else:
            self.data_page.show_tokens_error(_error_text(exc))

    def _tokens_ended(self, job):
        if self.jobs.get("tokens") is job and not self._running("data"):
            self.data_page.set_busy(None)

    def show_problem_record(self, issue):
        """Show the record a problem is about, read from its file off the GUI thread."""
        page = self.data_page
        path = self.data_report.files.get(issue.file) if self.data_report else None
        if path is None or not issue.line:
            page.show_record_text(issue, None, "" if issue.line else "(this problem is about the whole file)")
            return
        page.show_record_text(issue, None, "Reading...")
        old = self.jobs.get("raw")
        if old is not None and old.running:
            old.stop()
        job = Job(gj.read_raw_record, path, issue.line, parent=self)
        job.finished_ok.connect(lambda raw, i=issue: page.selected_issue() is i and page.show_record_text(i, raw))
        job.failed.connect(lambda exc, i=issue: page.selected_issue() is i and page.show_record_text(
            i, None, f"Cannot read the file: {_error_text(exc)}"))
        self.jobs["raw"] = job.start()

    # -- Train ----------------------------------------------------------------------
    def start_training(self):
        from core.train import TrainConfig, train

        if self.model_dir is None or not self.data_paths:
            QMessageBox.information(self, "Tuneloom", "Choose a model and add a dataset first.")
            return
        tp = self.train_page
        cfg = TrainConfig(model=str(self.model_dir), data=[str(p) for p in self.data_paths],
                          out=str(runs.new_run_dir("gui")), iters=tp.iters.value(), lr=float(tp.lr.currentText()),
                          rank=tp.rank.value(), alpha=2.0 * tp.rank.value(), batch=8,
                          max_seq_len=self.data_page.max_len.value(), valid_fraction=self.valid_fraction(),
                          skip_invalid=tp.skip_invalid.isChecked(), valid_every=max(10, tp.iters.value() // 4))
        self.run_dir = Path(cfg.out)
        tp.plot.clear_data()
        tp.progress.setValue(0)
        tp.status.setText("Starting...")
        job = Job(train, cfg, parent=self)
        job.events.metric_reported.connect(tp.plot.add)
        job.events.progress_changed.connect(self._train_progress)
        job.finished_ok.connect(self._train_done)
        job.failed.connect(self._train_failed)
        job.ended.connect(self._train_ended)
        tp.start_btn.setEnabled(False)
        tp.stop_btn.setEnabled(True)
        self.jobs["train"] = job.start()
        self.update_steps()

    def _train_progress(self, done, total, what):
        tp = self.train_page
        if done is not None and total:
            tp.progress.setMaximum(int(total))
            tp.progress.setValue(int(done))
            self.steps.set_state(TRAIN, "busy", f"step {int(done)} of {int(total)}", "Training: " + what)
            self.steps.viewport().update()
        tp.status.setText(what)

    def _train_done(self, result):
        self.train_page.status.setText(f"Done: {result['steps']} steps, validation loss {result['valid_loss']:.3f}. "
                                       "Go to Try to see the difference.")

    def _train_failed(self, exc):
        if isinstance(exc, Cancelled):
            self.train_page.status.setText(f"Stopped: {exc}")
        else:
            self.train_page.status.setText("Training failed: " + _error_text(exc))

    def _train_ended(self):
        self.train_page.start_btn.setEnabled(True)
        self.train_page.stop_btn.setEnabled(False)
        self.refresh_runs()
        self.update_steps()

    def stop_training(self):
        job = self.jobs.get("train")
        if job and job.running:
            self.train_page.status.setText("Stopping after this step...")
            job.stop()

    # -- Try ------------------------------------------------------------------------
    def ask(self):
        if self.model_dir is None:
            return
        text = self.try_page.prompt.text().strip()
        if not text:
            return
        messages = [{"role": "user", "content": text}]
        model_dir, run_dir = self.model_dir, self.run_dir

        def answer_both(events=None, cancel=None):
            from core.generate import ChatModel

            base = ChatModel(model_dir)
            out = {"base": base.answer(messages, cancel=cancel)}
            if run_dir is not None and (run_dir / "adapters.safetensors").exists():
                out["tuned"] = ChatModel(model_dir, adapter_dir=run_dir, encoder=base.encoder).answer(
                    messages, cancel=cancel)
            return out

        self.try_page.base_out.setPlainText("...")
        self.try_page.tuned_out.setPlainText("..." if run_dir else "(train a model first)")
        old = self.jobs.get("try")
        if old is not None and old.running:
            old.stop()
        tp = self.try_page
        job = Job(answer_both, parent=self)
        job.finished_ok.connect(lambda out, j=job: self.jobs.get("try") is j and self._answers(out))
        job.failed.connect(lambda exc, j=job: self.jobs.get("try") is j and self._answer_failed(exc))
        job.ended.connect(lambda j=job: self.jobs.get("try") is j and (tp.ask_btn.setEnabled(True),
                                                                       tp.stop_btn.setEnabled(False)))
        tp.ask_btn.setEnabled(False)
        tp.stop_btn.setEnabled(True)
        self.jobs["try"] = job.start()

    def stop_asking(self):
        job = self.jobs.get("try")
        if job is not None and job.running:
            job.stop()

    def _answer_failed(self, exc):
        tp = self.try_page
        if isinstance(exc, Cancelled):
            for w in (tp.base_out, tp.tuned_out):
                if w.toPlainText() == "...":
                    w.setPlainText("(stopped)")
        else:
            tp.base_out.setPlainText(_error_text(exc))

    def _answers(self, out):
        self.try_page.base_out.setPlainText(out["base"])
        if "tuned" in out:
            self.try_page.tuned_out.setPlainText(out["tuned"])

    # -- Export ---------------------------------------------------------------------
    def export(self):
        if self.run_dir is None:
            QMessageBox.information(self, "Tuneloom", "Train a model first.")
            return
        ep = self.export_page
        quant = ep.quant.currentText()
        dest = self.run_dir / "exports" / f"model-{quant}.gguf"
        ollama_name = ep.name.text().strip() or None
        job = Job(_export_job, self.run_dir, dest, quant, ollama_name, parent=self)
        job.events.progress_changed.connect(self._export_progress)
        job.finished_ok.connect(self._export_done)
        job.failed.connect(lambda exc: ep.result.setText("Export failed: " + html.escape(_error_text(exc))))
        job.ended.connect(self._export_ended)
        ep.export_btn.setEnabled(False)
        ep.cancel_btn.setEnabled(True)
        ep.result.setText("Exporting...")
        self.jobs["export"] = job.start()
        self.update_steps()

    def _export_ended(self):
        self.export_page.export_btn.setEnabled(True)
        self.export_page.cancel_btn.setEnabled(False)
        self.update_steps()

    def _export_progress(self, done, total, what):
        ep = self.export_page
        if done is not None and total:
            ep.progress.setMaximum(1000)
            ep.progress.setValue(int(1000 * done / total))
        ep.progress.setFormat(what[:60])

    def _export_done(self, res):
        ep = self.export_page
        ep.progress.setValue(ep.progress.maximum())
        ep.progress.setFormat("done")
        msg = (f"<b>GGUF:</b> {html.escape(str(res['gguf']))}<br><b>Modelfile:</b> "
               f"{html.escape(str(res['modelfile']))}<br>")
        if res.get("ollama"):
            msg += f"Registered in Ollama as <b>{html.escape(str(res['ollama'].get('name')))}</b>."
        else:
            msg += ("Ollama is not running. When it is, run:<br><code>"
                    f"{html.escape(res.get('ollama_command', ''))}</code>")
        ep.result.setText(msg)

    def cancel_export(self):
        job = self.jobs.get("export")
        if job and job.running:
            job.stop()

    def closeEvent(self, event):
        for job in self.jobs.values():
            if job.running:
                job.stop()
        self.save_settings()
        super().closeEvent(event)


def _export_job(run_dir, dest, quant, ollama_name, events=None, cancel=None):
    """Export, and register in Ollama only when a server answers (the GGUF and Modelfile are kept either way)."""
    from core import ollama as ol
    from core.export import export

    name = ollama_name if (ollama_name and ol.find_server()) else None
    res = export(run_dir, gguf=dest, quant=quant, ollama=name, force=False, events=events, cancel=cancel)
    if not name:
        res["ollama_command"] = ol.ollama_create_command(Path(res["modelfile"]), ollama_name or "my-model")
    return res
