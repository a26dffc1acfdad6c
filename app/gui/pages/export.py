"""Step 5, Export: one GGUF file and an Ollama Modelfile; registered when Ollama runs."""
from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton

from app.gui.pages.base import AppContext, Page, error_text


def export_job(run_dir, dest, quant, ollama_name, events=None, cancel=None):
    """Export, and register in Ollama only when a server answers (the GGUF and Modelfile are kept either way)."""
    from core import ollama as ol
    from core.export import export

    name = ollama_name if (ollama_name and ol.find_server()) else None
    res = export(run_dir, gguf=dest, quant=quant, ollama=name, force=False, events=events, cancel=cancel)
    if not name:
        res["ollama_command"] = ol.ollama_create_command(Path(res["modelfile"]), ollama_name or "my-model")
    return res


class ExportPage(Page):
    key = "export"
    title = "5. Export"
    blurb = ("Write one file with your fine-tuned model (GGUF) and a Modelfile for Ollama. If Ollama is running, "
             "the model is registered too.")

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        form = QFormLayout()
        self.quant = QComboBox()
        self.quant.setObjectName("export.quant")
        self.quant.addItems(["f16", "q8_0"])
        self.quant.setToolTip("f16 keeps full quality; q8_0 is half the size with a small quality loss.")
        self.name = QLineEdit("my-tuneloom-model")
        self.name.setObjectName("export.name")
        form.addRow("Precision", self.quant)
        form.addRow("Ollama name", self.name)
        self.export_btn = QPushButton("Export")
        self.export_btn.setObjectName("export.ollama")
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
        self.export_btn.clicked.connect(self.export)
        self.cancel_btn.clicked.connect(self.cancel)

    def restore_settings(self):
        quant = str(self.settings.value("export/quant", self.quant.currentText()))
        if self.quant.findText(quant) >= 0:
            self.quant.setCurrentText(quant)
        self.name.setText(str(self.settings.value("export/name", self.name.text())))

    def save_settings(self):
        self.settings.setValue("export/quant", self.quant.currentText())
        self.settings.setValue("export/name", self.name.text())

    def export(self):
        run_dir = self.session.run_dir
        if run_dir is None:
            self.result.setText("Train a model first (step 3), or pick a run in the history.")
            return
        quant = self.quant.currentText()
        dest = run_dir / "exports" / f"model-{quant}.gguf"
        self.export_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.result.setText("Exporting...")
        self.slots["export"].start(export_job, run_dir, dest, quant, self.name.text().strip() or None,
                                   on_progress=self._progress, on_ok=self._done, on_ended=self._ended,
                                   on_failed=lambda exc: self.result.setText(
                                       "Export failed: " + html.escape(error_text(exc))))

    def cancel(self):
        self.slots["export"].stop()

    def _ended(self):
        self.export_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.session.touch_run()

    def _progress(self, done, total, what):
        if done is not None and total:
            self.progress.setMaximum(1000)
            self.progress.setValue(int(1000 * done / total))
        self.progress.setFormat(what[:60])

    def _done(self, res):
        self.progress.setValue(self.progress.maximum())
        self.progress.setFormat("done")
        msg = (f"<b>GGUF:</b> {html.escape(str(res['gguf']))}<br><b>Modelfile:</b> "
               f"{html.escape(str(res['modelfile']))}<br>")
        if res.get("ollama"):
            msg += f"Registered in Ollama as <b>{html.escape(str(res['ollama'].get('name')))}</b>."
        else:
            msg += ("Ollama is not running. When it is, run:<br><code>"
                    f"{html.escape(res.get('ollama_command', ''))}</code>")
        self.result.setText(msg)
