"""The Export page's progress: one row per named stage (fuse -> GGUF -> upload -> create -> verify)."""
from __future__ import annotations

from PySide6.QtWidgets import QGridLayout, QLabel, QProgressBar, QWidget

STAGES = [("fuse", "Merge the fine-tune into the model"), ("gguf", "Write the GGUF file and Modelfile"),
          ("upload", "Upload to Ollama"), ("create", "Create the Ollama model"),
          ("verify", "Ask it a validation question")]
MARKS = {"waiting": "○", "running": "◐", "done": "✓", "failed": "✗", "skipped": "–"}


class ExportStages(QWidget):
    """``start(names)``, then ``stage(name)`` / ``done(name)`` / ``progress(done, total, what)`` as the
    export's events come; ``fail(text)`` marks the running stage."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("export.stages")
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        self.rows: dict[str, tuple[QLabel, QLabel, QProgressBar, QLabel]] = {}
        self.states: dict[str, str] = {}
        self.current: str | None = None
        for i, (key, title) in enumerate(STAGES):
            mark, name, bar, note = QLabel(MARKS["waiting"]), QLabel(title), QProgressBar(), QLabel("")
            bar.setObjectName(f"export.stage.{key}")
            bar.setMaximum(1000)
            bar.setTextVisible(False)
            bar.setFixedHeight(10)
            note.setWordWrap(True)
            for c, w in enumerate((mark, name, bar, note)):
                grid.addWidget(w, i, c)
            self.rows[key] = (mark, name, bar, note)
        grid.setColumnStretch(2, 1)
        grid.setColumnStretch(3, 2)
        self.reset(())

    def _set(self, key: str, state: str, note: str | None = None):
        self.states[key] = state
        mark, name, bar, lab = self.rows[key]
        mark.setText(MARKS[state])
        name.setEnabled(state != "skipped")
        if state == "done":
            bar.setRange(0, 1000)
            bar.setValue(1000)
        elif state in ("waiting", "skipped"):
            bar.setRange(0, 1000)
            bar.setValue(0)
        if note is not None:
            lab.setText(note)

    def reset(self, names):
        """The stages this export will go through; the others are shown as skipped."""
        self.current = None
        for key, _t in STAGES:
            self._set(key, "waiting" if key in names else "skipped", "")

    def stage(self, key: str):
        if key not in self.rows:
            return
        if self.current and self.states.get(self.current) == "running":
            self._set(self.current, "done")
        self.current = key
        self._set(key, "running", "")
        self.rows[key][2].setRange(0, 0)  # busy until the first progress report

    def done(self, key: str):
        if key in self.rows:
            self._set(key, "done", "done")
            if self.current == key:
                self.current = None

    def progress(self, done, total, what: str):
        if self.current is None:
            return
        _m, _n, bar, note = self.rows[self.current]
        if done is not None and total:
            bar.setRange(0, 1000)
            bar.setValue(int(1000 * min(1.0, done / total)))
        note.setText(what[:70])

    def fail(self, text: str, key: str | None = None):
        key = key or self.current
        if key in self.rows:
            self._set(key, "failed", text)
        self.current = None

    def note(self, key: str, text: str):
        self.rows[key][3].setText(text)
