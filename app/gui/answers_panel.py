"""The answers panel of the Data step: which answers of preference data are trained, and what
fills the placeholders in the answers (issue 26).

Shown only when the dataset needs a choice: preference pairs (a chosen and a rejected answer to
one prompt) need "train on the chosen answers" before supervised training can use them, and
answers holding ``{{name}}`` / ``{name}`` slots (LLaMA-Factory's identity set) can be filled.
The panel only shows state and reports choices: :attr:`AnswersPanel.applied` carries
``load_dataset``'s keyword arguments ``use`` and ``fill`` (TrainConfig has fields of the same
names). Nothing here reads files.
"""
from __future__ import annotations

import html

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

MAX_FIELDS = 12  # placeholders offered for filling; a file with more is a template, not a dataset


class AnswersPanel(QWidget):
    """``applied(dict)``: {"use": "chosen" or None, "fill": {name: value} or None}."""

    applied = Signal(dict)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("data.answers")
        self._use: str | None = None
        self._fill: dict[str, str] = {}
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)

        self.pref_box = QWidget()
        pl = QVBoxLayout(self.pref_box)
        pl.setContentsMargins(0, 0, 0, 0)
        self.pref_label = QLabel("")
        self.pref_label.setObjectName("data.preference")
        self.pref_label.setWordWrap(True)
        pl.addWidget(self.pref_label)
        self.use_chosen = QCheckBox("Train on the chosen answers (the rejected ones are left out)")
        self.use_chosen.setObjectName("data.use_chosen")
        self.use_chosen.setToolTip("Supervised training learns one answer per example: with this on it learns the "
                                   "chosen answer of every pair, as `--use chosen` does. Preference tuning trains "
                                   "on both answers.")
        self.use_chosen.toggled.connect(self._use_toggled)
        pl.addWidget(self.use_chosen)
        lay.addWidget(self.pref_box)

        self.fill_box = QWidget()
        fl = QVBoxLayout(self.fill_box)
        fl.setContentsMargins(0, 0, 0, 0)
        self.fill_label = QLabel("")
        self.fill_label.setObjectName("data.placeholders")
        self.fill_label.setWordWrap(True)
        fl.addWidget(self.fill_label)
        self.form = QFormLayout()
        fl.addLayout(self.form)
        row = QHBoxLayout()
        row.addStretch(1)
        self.fill_btn = QPushButton("Fill placeholders")
        self.fill_btn.setObjectName("data.fill_apply")
        self.fill_btn.setToolTip("Read the files again with these values in place of the placeholders, as "
                                 "`--fill NAME=VALUE` does. The files themselves are not changed.")
        self.fill_btn.clicked.connect(self._apply_fill)
        row.addWidget(self.fill_btn)
        fl.addLayout(row)
        lay.addWidget(self.fill_box)
        self.edits: dict[str, QLineEdit] = {}

    def options(self) -> dict:
        return {"use": self._use, "fill": dict(self._fill) or None}

    def reset(self) -> None:
        self._use, self._fill = None, {}

    def show_dataset(self, ds) -> bool:
        """Show what this dataset needs; returns whether there is anything to show."""
        from core.data import PREFERENCE_FORMATS

        pairs = getattr(ds, "pairs", 0)
        self.pref_box.setVisible(bool(pairs))
        if pairs:
            shapes = sorted({PREFERENCE_FORMATS[f] for f in ds.formats.values() if f in PREFERENCE_FORMATS
                             and f != "kto"})
            state = ("the chosen answers are trained" if self._use == "chosen" else
                     "supervised training needs one answer per example")
            self.pref_label.setText(f"<b>Preference pairs: {pairs:,}</b> ({html.escape('; '.join(shapes))}): "
                                    f"{state}.")
            self.use_chosen.blockSignals(True)
            self.use_chosen.setChecked(self._use == "chosen")
            self.use_chosen.blockSignals(False)
        note = next((n for n in getattr(ds, "notes", []) if n.kind == "placeholders"), None)
        names = sorted({f.strip("{}").strip() for f in (note.fields if note else [])} | set(self._fill))
        self.fill_box.setVisible(bool(names))
        while self.form.rowCount():
            self.form.removeRow(0)
        self.edits = {}
        if names:
            left = (f"<b>Placeholders</b> in the answers of {note.count:,} example{'s' if note.count != 1 else ''}: "
                    f"{html.escape(', '.join(note.fields))}. Give each a value, or the model learns them as written "
                    "(the files are not changed).") if note else "<b>Placeholders</b>: all filled."
            self.fill_label.setText(left)
            for name in names[:MAX_FIELDS]:
                edit = QLineEdit(self._fill.get(name, ""))
                edit.setObjectName(f"data.fill.{name}")
                edit.setPlaceholderText(f"the text for {{{{{name}}}}}")
                edit.returnPressed.connect(self._apply_fill)
                self.form.addRow(f"{name}:", edit)
                self.edits[name] = edit
        return bool(pairs or names)

    def _use_toggled(self, on: bool) -> None:
        self._use = "chosen" if on else None
        self.applied.emit(self.options())

    def _apply_fill(self) -> None:
        self._fill = {k: e.text() for k, e in self.edits.items() if e.text()}
        self.applied.emit(self.options())
