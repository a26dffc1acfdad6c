"""The mapping panel of the Data step: which columns make the user message and the answer.

For tables (and any field layout) that are not chat fields: pick a column for the question
and one for the answer, or write templates such as ``Pokemon name: {name}``, and add an
optional system prompt. The first rows are previewed live, through ``core.data`` exactly
as loading the files will read them, so what the preview shows is what will be trained.

The panel only shows state and reports choices: it is given the file's columns and first
rows (``core.data.sample_rows``, run off the GUI thread by its owner) and emits
:attr:`MappingPanel.applied` with ``load_dataset`` keyword arguments. Nothing here reads
files or tokenizes.
"""
from __future__ import annotations

import html

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import (QComboBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QTextBrowser,
                               QVBoxLayout, QWidget)

from core.data import FORMATS, DatasetError, preview_records

PREVIEW_ROWS = 3  # examples shown
_NO_COLUMN = "(choose a column)"


class MappingPanel(QWidget):
    """Columns or templates -> chat messages, previewed.

    ``applied(dict)``: the user chose; the dict holds ``user_template``, ``assistant_template``
    and ``system`` (``load_dataset``'s keyword arguments), or is empty for "read the fields
    automatically"."""

    applied = Signal(dict)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("data.mapping")
        self._columns: list[str] = []
        self._rows: list[tuple[int | None, dict]] = []
        self._file = ""
        self._records: list = []
        self._issues: list = []
        self._notes: list = []
        self._error: str | None = None
        self._format: str | None = None  # the format the file was read in automatically (core.data.FORMATS)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.intro = QLabel("Choose which columns make the question and the answer, or write templates: a column "
                            "name in braces, such as {name}, is replaced by that column's value.")
        self.intro.setWordWrap(True)
        lay.addWidget(self.intro)
        self.columns_label = QLabel("")
        self.columns_label.setObjectName("mapping.columns")
        self.columns_label.setWordWrap(True)
        lay.addWidget(self.columns_label)

        picks = QHBoxLayout()
        self.user_column = QComboBox()
        self.user_column.setObjectName("mapping.user_column")
        self.user_column.setToolTip("The column whose value is the user's message.")
        self.assistant_column = QComboBox()
        self.assistant_column.setObjectName("mapping.assistant_column")
        self.assistant_column.setToolTip("The column whose value is the answer the model learns to write.")
        picks.addWidget(QLabel("Question column:"))
        picks.addWidget(self.user_column, 1)
        picks.addWidget(QLabel("Answer column:"))
        picks.addWidget(self.assistant_column, 1)
        lay.addLayout(picks)

        form = QFormLayout()
        self.user_template = QLineEdit()
        self.user_template.setObjectName("mapping.user_template")
        self.user_template.setPlaceholderText("e.g. Pokemon name: {name}")
        self.user_template.setToolTip("The user's message. {column} is replaced by that column's value; "
                                      "write {{ and }} for literal braces.")
        self.assistant_template = QLineEdit()
        self.assistant_template.setObjectName("mapping.assistant_template")
        self.assistant_template.setPlaceholderText("e.g. {types}")
        self.assistant_template.setToolTip("The answer the model learns to write, from the columns in braces.")
        self.system = QLineEdit()
        self.system.setObjectName("mapping.system")
        self.system.setPlaceholderText("optional, e.g. You are a Pokedex.")
        self.system.setToolTip("A system prompt put in front of every example that has none (used as written).")
        form.addRow("User message:", self.user_template)
        form.addRow("Answer:", self.assistant_template)
        form.addRow("System prompt:", self.system)
        lay.addLayout(form)

        self.error = QLabel("")
        self.error.setObjectName("mapping.error")
        self.error.setWordWrap(True)
        self.error.hide()
        lay.addWidget(self.error)
        self.preview = QTextBrowser()
        self.preview.setObjectName("mapping.preview")
        self.preview.setOpenLinks(False)
        self.preview.setMinimumHeight(120)
        lay.addWidget(self.preview, 1)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.auto_btn = QPushButton("Read fields automatically")
        self.auto_btn.setObjectName("mapping.auto")
        self.auto_btn.setToolTip("Forget the templates: the file's own chat fields (messages, prompt/completion, "
                                 "...) are used.")
        self.apply_btn = QPushButton("Use these templates")
        self.apply_btn.setObjectName("mapping.apply")
        buttons.addWidget(self.auto_btn)
        buttons.addWidget(self.apply_btn)
        lay.addLayout(buttons)

        # the preview follows typing, a moment after the last key
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(120)
        self._timer.timeout.connect(self.refresh)
        for edit in (self.user_template, self.assistant_template, self.system):
            edit.textChanged.connect(lambda _t: self._timer.start())
        self.user_column.activated.connect(lambda _i: self._pick(self.user_column, self.user_template))
        self.assistant_column.activated.connect(lambda _i: self._pick(self.assistant_column, self.assistant_template))
        self.apply_btn.clicked.connect(self._apply)
        self.auto_btn.clicked.connect(lambda: self.applied.emit({}))
        self.refresh()

    # -- input
    def set_sample(self, columns: list[str], rows: list[tuple[int | None, dict]], file: str = "") -> None:
        """The file's column names and its first rows (``core.data.sample_rows``)."""
        self._columns = [str(c) for c in columns]
        self._rows = list(rows)[:PREVIEW_ROWS]
        self._file = file
        for combo in (self.user_column, self.assistant_column):
            combo.blockSignals(True)
            combo.clear()
            combo.addItems([_NO_COLUMN] + self._columns)
            combo.blockSignals(False)
        self.columns_label.setText(("Columns in " + html.escape(file) + ": " if file else "Columns: ")
                                   + ", ".join(f"<b>{html.escape(c)}</b>" for c in self._columns))
        self.refresh()

    def show_format(self, fmt: str | None) -> None:
        """The file was read automatically in ``fmt`` (e.g. "question-answer"): the pickers show the columns
        it used, not "(choose a column)" under a preview made from them."""
        self._format = fmt
        self._sync_pickers()

    def columns_in_use(self) -> tuple[str | None, str | None]:
        """(question column, answer column): those the templates name whole ("{col}"), else those the
        automatic reading used."""
        def whole(text: str) -> str | None:
            t = text.strip()
            if t.startswith("{") and t.endswith("}") and t.count("{") == 1:
                name = t[1:-1]
                return next((c for c in self._columns if c == name), None)
            return None

        user, answer = whole(self.user_template.text()), whole(self.assistant_template.text())
        if not self.user_template.text().strip() and not self.assistant_template.text().strip() and self._format:
            keys = dict(FORMATS).get(self._format) or ()
            if self._format == "alpaca":
                keys = ("instruction", "output")
            if len(keys) == 2:
                by_low = {c.strip().lower(): c for c in self._columns}
                user, answer = by_low.get(keys[0]), by_low.get(keys[1])
        return user, answer

    def _sync_pickers(self) -> None:
        for combo, col in zip((self.user_column, self.assistant_column), self.columns_in_use()):
            i = combo.findText(col) if col else 0
            combo.blockSignals(True)
            combo.setCurrentIndex(max(0, i))
            combo.blockSignals(False)

    def set_templates(self, user_template: str | None, assistant_template: str | None,
                      system: str | None = None) -> None:
        """Show saved choices (e.g. from a run's config)."""
        self.user_template.setText(user_template or "")
        self.assistant_template.setText(assistant_template or "")
        self.system.setText(system or "")
        self.refresh()

    def _pick(self, combo: QComboBox, edit: QLineEdit) -> None:
        col = combo.currentText()
        if col and col != _NO_COLUMN:
            edit.setText("{" + col.replace("{", "{{").replace("}", "}}") + "}")
            self.refresh()

    # -- output
    def options(self) -> dict:
        """``load_dataset`` keyword arguments for the current choices ({} when no template is written)."""
        user, assistant = self.user_template.text(), self.assistant_template.text()
        if not user.strip() and not assistant.strip():
            return {}
        return {"user_template": user or None, "assistant_template": assistant or None,
                "system": self.system.text().strip() or None}

    def config_fields(self) -> dict:
        """The same choices under TrainConfig's names (saved with the run's config.json)."""
        o = self.options()
        return {"user_template": o.get("user_template"), "assistant_template": o.get("assistant_template"),
                "system_prompt": o.get("system")}

    @property
    def records(self) -> list:
        return list(self._records)

    @property
    def issues(self) -> list:
        return list(self._issues)

    @property
    def error_text(self) -> str | None:
        return self._error

    def _apply(self) -> None:
        self.refresh()
        if self.apply_btn.isEnabled():
            self.applied.emit(self.options())

    # -- the preview
    def refresh(self) -> None:
        self._timer.stop()
        opts = self.options()
        self._records, self._issues, self._notes, self._error = [], [], [], None
        if not opts:
            why = "Write the user message and the answer (or pick their columns) to see the examples."
        elif not opts.get("user_template") or not opts.get("assistant_template"):
            why = "Write both the user message and the answer."
        else:
            why = None
            try:
                self._records, self._issues, self._notes = preview_records(self._rows, file=self._file, **opts)
            except DatasetError as exc:
                self._error = exc.user_message()
                why = "Fix the template first."
        self.error.setText(html.escape(self._error or "", quote=False).replace("\n", "<br>"))
        self.error.setVisible(bool(self._error))
        ok = why is None and bool(self._records)
        if why is None and not self._records:
            why = "None of the first rows gives a usable example: see the preview."
        self.apply_btn.setEnabled(ok)
        self.apply_btn.setToolTip("Read every example through these templates." if ok else why)
        self.preview.setHtml(self._preview_html(why))
        self._sync_pickers()

    def _preview_html(self, why: str | None) -> str:
        if not self._rows:
            return "<i>No rows to preview yet.</i>"
        if why and not self._records and not self._issues:
            return f"<i>{html.escape(why)}</i>"
        parts = []
        shown = {r.line: r for r in self._records}
        problems = {i.line: i for i in self._issues}
        for line, _ in self._rows:
            head = f"<b>line {line}</b>" if line else "<b>example</b>"
            if line in shown:
                msgs = "<br>".join(f"<i>{html.escape(m['role'])}:</i> {html.escape(m['content'])}"
                                   for m in shown[line].messages)
                parts.append(f"{head}<br>{msgs}")
            elif line in problems:
                parts.append(f"{head}: problem: {html.escape(problems[line].message)}")
        parts += [f"<i>{html.escape(str(n))}</i>" for n in self._notes]
        return "<hr>".join(parts)
