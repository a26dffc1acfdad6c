"""The main window: five steps in a sidebar (Model, Data, Train, Try, Export), one page each."""
from __future__ import annotations

import json
import time
from pathlib import Path

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import (QCheckBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                               QListWidgetItem, QMainWindow, QMessageBox, QPlainTextEdit, QProgressBar, QPushButton,
                               QSpinBox, QSplitter, QStackedWidget, QVBoxLayout, QWidget, QComboBox)

from app.gui.widgets import DropZone, LossPlot, acceptable, dropped_paths
from app.gui.workers import Job
from core import paths, runs
from core.events import Cancelled, TuneloomError

STEPS = ["Model", "Data", "Train", "Try", "Export"]


def _error_text(exc) -> str:
    return exc.user_message() if isinstance(exc, TuneloomError) else f"{type(exc).__name__}: {exc}"


class Page(QWidget):
    def __init__(self, window: "MainWindow", title: str, blurb: str):
        super().__init__()
        self.win = window
        self.layout_ = QVBoxLayout(self)
        head = QLabel(f"<h2>{title}</h2><p>{blurb}</p>")
        head.setWordWrap(True)
        self.layout_.addWidget(head)


class ModelPage(Page):
    def __init__(self, win):
        super().__init__(win, "1. Choose a model", "The model you will teach. The bundled demo model works offline "
                         "and trains in about a minute; larger models come with the catalog.")
        self.demo_btn = QPushButton("Use the bundled demo model")
        self.open_btn = QPushButton("Open local model folder...")
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.layout_.addWidget(self.demo_btn)
        self.layout_.addWidget(self.open_btn)
        self.layout_.addWidget(self.info)
        self.layout_.addStretch(1)
        self.demo_btn.clicked.connect(lambda: win.set_model(paths.demo_model_dir()))
        self.open_btn.clicked.connect(self._open)

    def _open(self):
        d = QFileDialog.getExistingDirectory(self, "Open a model folder")
        if d:
            self.win.set_model(Path(d))

    def show_model(self, model_dir: Path | None, detail: str):
        self.info.setText(f"<b>Selected:</b> {model_dir}<br>{detail}" if model_dir else detail)


class DataPage(Page):
    def __init__(self, win):
        super().__init__(win, "2. Add your examples", "Drop files with example conversations. Tuneloom checks every "
                         "example and tells you exactly what to fix.")
        self.drop = DropZone()
        self.sample_btn = QPushButton("Use a sample dataset")
        self.open_btn = QPushButton("Open dataset file...")
        row = QHBoxLayout()
        row.addWidget(self.sample_btn)
        row.addWidget(self.open_btn)
        self.summary = QLabel("No dataset yet.")
        self.summary.setWordWrap(True)
        self.problems = QListWidget()
        self.preview = QPlainTextEdit()
        self.preview.setReadOnly(True)
        self.layout_.addWidget(self.drop)
        self.layout_.addLayout(row)
        self.layout_.addWidget(self.summary)
        self.layout_.addWidget(QLabel("Problems"))
        self.layout_.addWidget(self.problems, 1)
        self.layout_.addWidget(QLabel("First examples"))
        self.layout_.addWidget(self.preview, 2)
        self.drop.files_dropped.connect(win.load_data)
        self.sample_btn.clicked.connect(lambda: win.load_data([paths.demo_data_dir()]))
        self.open_btn.clicked.connect(self._open)

    def _open(self):
        files, _ = QFileDialog.getOpenFileNames(self, "Open dataset files", "",
                                                "Datasets (*.jsonl *.json *.csv *.tsv *.txt *.md *.parquet)")
        if files:
            self.win.load_data([Path(f) for f in files])

    def show_dataset(self, ds, files):
        self.problems.clear()
        for issue in ds.issues:
            self.problems.addItem(QListWidgetItem(str(issue)))
        self.summary.setText(
            f"<b>{', '.join(p.name for p in files)}</b>: format <b>{ds.format}</b>, {ds.total} examples, "
            f"<b>{len(ds.records)}</b> valid, {ds.invalid} with problems, {ds.duplicates()} duplicates.")
        lines = []
        for r in ds.records[:5]:
            for m in r.messages:
                lines.append(f"{m['role']:>9}: {m.get('content', '')}")
            lines.append("")
        self.preview.setPlainText("\n".join(lines))

    def show_error(self, text: str):
        self.problems.clear()
        self.summary.setText(f"<span style='color:#dc2626'><b>Cannot use this dataset.</b></span> {text}")
        self.preview.clear()


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
        self.progress = QProgressBar()
        self.status = QLabel("")
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
        self.base_out = QPlainTextEdit()
        self.tuned_out = QPlainTextEdit()
        for w in (self.base_out, self.tuned_out):
            w.setReadOnly(True)
        self.layout_.addWidget(self.prompt)
        self.layout_.addWidget(self.ask_btn)
        self.layout_.addWidget(QLabel("Original model"))
        self.layout_.addWidget(self.base_out)
        self.layout_.addWidget(QLabel("Your fine-tuned model"))
        self.layout_.addWidget(self.tuned_out)
        self.ask_btn.clicked.connect(win.ask)
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
        self.setWindowTitle("Tuneloom")
        self.setAcceptDrops(True)
        self.settings = settings or QSettings("Tuneloom", "Tuneloom")
        self.model_dir: Path | None = None
        self.data_paths: list[Path] = []
        self.dataset = None
        self.run_dir: Path | None = None
        self.jobs: dict[str, Job] = {}

        self.steps = QListWidget()
        self.steps.setFixedWidth(180)
        for s in STEPS:
            self.steps.addItem(QListWidgetItem(s))
        self.runs_list = QListWidget()
        self.runs_list.setFixedWidth(180)
        side = QWidget()
        sl = QVBoxLayout(side)
        sl.addWidget(QLabel("<b>Steps</b>"))
        sl.addWidget(self.steps, 2)
        sl.addWidget(QLabel("<b>Past runs</b>"))
        sl.addWidget(self.runs_list, 1)
        self.pages = QStackedWidget()
        self.model_page, self.data_page = ModelPage(self), DataPage(self)
        self.train_page, self.try_page, self.export_page = TrainPage(self), TryPage(self), ExportPage(self)
        for p in (self.model_page, self.data_page, self.train_page, self.try_page, self.export_page):
            self.pages.addWidget(p)
        split = QSplitter()
        split.addWidget(side)
        split.addWidget(self.pages)
        split.setStretchFactor(1, 1)
        self.setCentralWidget(split)
        self.steps.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.runs_list.itemClicked.connect(self._pick_run)
        self._build_menus()
        self.statusBar().showMessage("Ready")
        geo = self.settings.value("geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        else:
            self.resize(1100, 760)
        self.set_model(Path(self.settings.value("model", str(paths.demo_model_dir()))))
        self.refresh_runs()
        self.steps.setCurrentRow(0)
        self.update_steps()

    # -- chrome ---------------------------------------------------------------
    def _build_menus(self):
        m = self.menuBar().addMenu("&File")
        m.addAction("Open Dataset...", self.data_page._open)
        m.addAction("Open Model Folder...", self.model_page._open)
        m.addSeparator()
        m.addAction("Quit", self.close)
        h = self.menuBar().addMenu("&Help")
        h.addAction("About Tuneloom", lambda: QMessageBox.about(
            self, "About Tuneloom", "Tuneloom: fine-tune a small chat model and run it in Ollama."))

    def update_steps(self):
        state = {
            "Model": (self.model_dir is not None, "choose a model"),
            "Data": (self.dataset is not None and bool(self.dataset.records), "add a dataset"),
            "Train": (self.run_dir is not None and (self.run_dir / "adapters.safetensors").exists(), "train first"),
        }
        ready = {"Model": True, "Data": self.model_dir is not None,
                 "Train": self.model_dir is not None and self.dataset is not None and bool(self.dataset.records),
                 "Try": state["Train"][0], "Export": state["Train"][0]}
        for i, s in enumerate(STEPS):
            item = self.steps.item(i)
            done = state.get(s, (False, ""))[0]
            mark = "✓ " if done else ("• " if ready[s] else "○ ")
            item.setText(mark + s)
            item.setToolTip("done" if done else ("ready" if ready[s] else "blocked: " + {
                "Data": "choose a model first", "Train": "add a valid dataset first",
                "Try": "train a model first", "Export": "train a model first"}.get(s, "")))

    def refresh_runs(self):
        self.runs_list.clear()
        for r in runs.list_runs():
            item = QListWidgetItem(f"{r.name} ({r.state})")
            item.setData(Qt.ItemDataRole.UserRole, str(r.path))
            self.runs_list.addItem(item)

    def _pick_run(self, item):
        self.run_dir = Path(item.data(Qt.ItemDataRole.UserRole))
        self.statusBar().showMessage(f"Selected run {self.run_dir.name}")
        self.update_steps()

    # -- drops anywhere on the window ------------------------------------------
    def dragEnterEvent(self, event):
        if acceptable(dropped_paths(event.mimeData())):
            event.acceptProposedAction()

    def dropEvent(self, event):
        ps = dropped_paths(event.mimeData())
        if acceptable(ps):
            event.acceptProposedAction()
            self.load_data(ps)

    # -- Model ----------------------------------------------------------------------
    def set_model(self, model_dir: Path):
        if not (model_dir / "config.json").exists():
            self.model_page.show_model(None, f"<span style='color:#dc2626'>{model_dir} is not a model folder "
                                       "(no config.json).</span>")
            return
        cfg = json.loads((model_dir / "config.json").read_text())
        self.model_dir = model_dir
        self.settings.setValue("model", str(model_dir))
        self.model_page.show_model(model_dir, f"{cfg.get('model_type', '?')} model, "
                                   f"{cfg.get('num_hidden_layers', '?')} layers, hidden size {cfg.get('hidden_size', '?')}")
        self.update_steps()

    # -- Data -----------------------------------------------------------------------
    def load_data(self, files: list):
        from core.data import load_dataset

        files = [Path(f) for f in files]
        self.steps.setCurrentRow(1)
        self.data_page.summary.setText("Checking " + ", ".join(f.name for f in files) + "...")
        job = Job(load_dataset, files, parent=self)
        job.finished_ok.connect(lambda ds: self._data_loaded(ds, files))
        job.failed.connect(lambda exc: self.data_page.show_error(_error_text(exc)))
        self.jobs["data"] = job.start()

    def _data_loaded(self, ds, files):
        self.dataset = ds
        self.data_paths = files
        self.data_page.show_dataset(ds, files)
        self.update_steps()

    # -- Train ----------------------------------------------------------------------
    def start_training(self):
        from core.train import TrainConfig, train

        if self.model_dir is None or not self.data_paths:
            QMessageBox.information(self, "Tuneloom", "Choose a model and add a dataset first.")
            return
        tp = self.train_page
        cfg = TrainConfig(model=str(self.model_dir), data=[str(p) for p in self.data_paths],
                          out=str(runs.new_run_dir("gui")), iters=tp.iters.value(), lr=float(tp.lr.currentText()),
                          rank=tp.rank.value(), alpha=2.0 * tp.rank.value(), batch=8, max_seq_len=512,
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

    def _train_progress(self, done, total, what):
        tp = self.train_page
        if total:
            tp.progress.setMaximum(int(total))
            tp.progress.setValue(int(done))
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
        job = Job(answer_both, parent=self)
        job.finished_ok.connect(self._answers)
        job.failed.connect(lambda exc: self.try_page.base_out.setPlainText(_error_text(exc)))
        self.jobs["try"] = job.start()

    def _answers(self, out):
        self.try_page.base_out.setPlainText(out["base"])
        if "tuned" in out:
            self.try_page.tuned_out.setPlainText(out["tuned"])

    # -- Export ---------------------------------------------------------------------
    def export(self):
        from core.export import export

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
        job.failed.connect(lambda exc: ep.result.setText("Export failed: " + _error_text(exc)))
        job.ended.connect(lambda: (ep.export_btn.setEnabled(True), ep.cancel_btn.setEnabled(False)))
        ep.export_btn.setEnabled(False)
        ep.cancel_btn.setEnabled(True)
        ep.result.setText("Exporting...")
        self.jobs["export"] = job.start()

    def _export_progress(self, done, total, what):
        ep = self.export_page
        if total:
            ep.progress.setMaximum(1000)
            ep.progress.setValue(int(1000 * done / total))
        ep.progress.setFormat(what[:60])

    def _export_done(self, res):
        ep = self.export_page
        ep.progress.setValue(ep.progress.maximum())
        msg = f"<b>GGUF:</b> {res['gguf']}<br><b>Modelfile:</b> {res['modelfile']}<br>"
        if res.get("ollama"):
            msg += f"Registered in Ollama as <b>{res['ollama'].get('name')}</b>."
        else:
            msg += f"Ollama is not running. When it is, run:<br><code>{res.get('ollama_command', '')}</code>"
        ep.result.setText(msg)

    def cancel_export(self):
        job = self.jobs.get("export")
        if job and job.running:
            job.stop()

    def closeEvent(self, event):
        for job in self.jobs.values():
            if job.running:
                job.stop()
        self.settings.setValue("geometry", self.saveGeometry())
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
