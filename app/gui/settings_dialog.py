"""Settings... (Preferences on macOS): the choices that hold across datasets and runs."""
from __future__ import annotations

import html

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (QCheckBox, QDialog, QDialogButtonBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QSpinBox, QVBoxLayout)

from app.gui import theme
from app.gui.workers import Job


def _save_token(token: str, events=None, cancel=None):
    from core.hub import save_token

    return save_token(token)


def _number(settings: QSettings, key: str, default: float) -> float:
    try:
        return float(settings.value(key, default))
    except (TypeError, ValueError):
        return default


def read_bool(settings: QSettings, key: str, default: bool) -> bool:
    v = settings.value(key, default)
    return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")


class SettingsDialog(QDialog):
    def __init__(self, settings: QSettings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.valid_pct = QSpinBox()
        self.valid_pct.setRange(1, 50)
        self.valid_pct.setSuffix(" %")
        self.valid_pct.setValue(round(100 * _number(settings, "data/valid_fraction", 0.1)))
        self.valid_pct.setToolTip("The share of examples held out to check progress during training, when the "
                                  "data has no separate validation file.")
        self.max_len = QSpinBox()
        self.max_len.setRange(16, 32768)
        self.max_len.setSingleStep(64)
        self.max_len.setSuffix(" tokens")
        self.max_len.setValue(int(_number(settings, "data/max_seq_len", 512)))
        self.reopen = QCheckBox("Open the last dataset again when Tuneloom starts")
        self.reopen.setChecked(read_bool(settings, "data/reopen", True))
        form.addRow("Validation share", self.valid_pct)
        form.addRow("Max length per example", self.max_len)
        form.addRow("", self.reopen)

        from core.hub_env import token_path
        from core.paths import runs_dir

        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("hf_... (needed only for gated models such as Llama)")
        self.save_token_btn = QPushButton("Save token")
        trow = QHBoxLayout()
        trow.addWidget(self.token, 1)
        trow.addWidget(self.save_token_btn)
        form.addRow("Hugging Face token", trow)
        have = token_path().exists()
        self.token_status = QLabel(("A token is stored" if have else "No token stored") +
                                   f" ({html.escape(str(token_path()))}, where huggingface_hub keeps it).")
        self.token_status.setWordWrap(True)
        form.addRow("", self.token_status)
        form.addRow("Appearance", QLabel("Follows the system's light or dark appearance."))
        runs = QLabel(html.escape(str(runs_dir())))
        runs.setWordWrap(True)
        form.addRow("Runs are kept in", runs)
        lay.addLayout(form)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.save_token_btn.clicked.connect(self._save_token)
        self.job = None

    def _save_token(self):
        tok = self.token.text().strip()
        if not tok:
            return
        self.save_token_btn.setEnabled(False)
        self.token_status.setText("Checking the token with Hugging Face...")
        self.job = Job(_save_token, tok, parent=self)
        self.job.finished_ok.connect(lambda p: self.token_status.setText(
            theme.span("Token saved", "ok", self.palette(), bold=True) + f" in {html.escape(str(p))}."))
        self.job.failed.connect(lambda exc: self.token_status.setText(
            theme.span(html.escape(getattr(exc, "user_message", lambda: str(exc))()), "error", self.palette())))
        self.job.ended.connect(lambda: self.save_token_btn.setEnabled(True))
        self.job.start()

    def accept(self):
        self.settings.setValue("data/valid_fraction", self.valid_pct.value() / 100)
        self.settings.setValue("data/max_seq_len", self.max_len.value())
        self.settings.setValue("data/reopen", self.reopen.isChecked())
        super().accept()
