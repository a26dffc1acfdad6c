"""The Try page's evaluation: metrics for both models, one sortable row per example, the details of a row."""
from __future__ import annotations

import html
import time
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QPushButton, QSplitter,
                               QTableWidget, QTableWidgetItem, QTextBrowser, QVBoxLayout, QWidget)

METRICS = [("exact_match", "Exact match", "pct"), ("json_valid", "Valid JSON", "pct"),
           ("json_field_accuracy", "JSON field accuracy", "pct"), ("loss", "Loss (held out)", "num"),
           ("perplexity", "Perplexity", "num"), ("examples", "Examples", "int"),
           # preference runs (issue 30): the share of held-out pairs whose chosen answer the model rates above
           # the rejected one (core.evaluate's preference_accuracy; the row is hidden for chat data)
           ("preference_accuracy", "Preference accuracy", "pct"),
           # tool calls (issue 31): examples whose calls the model writes right (hidden without calls)
           ("tool_call_accuracy", "Tool-call accuracy", "pct")]
PREFERENCE_ROW = next(i for i, (k, _l, _t) in enumerate(METRICS) if k == "preference_accuracy")
TOOL_ROW = next(i for i, (k, _l, _t) in enumerate(METRICS) if k == "tool_call_accuracy")
ROW_COLUMNS = ["#", "Question", "Expected", "Original", "Fine-tuned", "Original exact", "Fine-tuned exact"]


def metric_text(value, kind: str) -> str:
    """How the table shows a metric (the same numbers as ``tuneloom eval --json``, rounded)."""
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "int":
        return str(int(value))
    return f"{value:.4f}"


class _Item(QTableWidgetItem):
    """Sorts by its sort key (a number for # and the yes/no columns), shows its text."""

    def __init__(self, text: str, key=None):
        super().__init__(text)
        self.key = text if key is None else key
        self.setFlags(self.flags() & ~Qt.ItemFlag.ItemIsEditable)

    def __lt__(self, other):
        try:
            return self.key < other.key
        except TypeError:
            return str(self.key) < str(other.key)


def calls_text(calls: list[dict] | None) -> str:
    """Calls as the Try page shows them: ``describe(name="Olla", category="kettle")``, "; " between calls."""
    from core.tools import call_text

    return "; ".join(call_text(c) for c in calls) if calls else "(no call)"


def _short(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 1] + "…"


class EvalTable(QWidget):
    """Metrics (rows) x models (columns), then the examples; a click shows an example in full."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list = []
        self.result = None
        self.run_dir: Path | None = None
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.metrics = QTableWidget(len(METRICS), 2)
        self.metrics.setObjectName("try.metrics")
        self.metrics.setHorizontalHeaderLabels(["Original", "Fine-tuned"])
        self.metrics.setVerticalHeaderLabels([label for _k, label, _t in METRICS])
        self.metrics.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.metrics.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.metrics.verticalHeader().setDefaultSectionSize(26)
        self.metrics.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.metrics.setRowHidden(PREFERENCE_ROW, True)  # until an evaluation of preference pairs
        self.metrics.setRowHidden(TOOL_ROW, True)  # until an evaluation of tool calls
        self._fit_metrics()
        self.table = QTableWidget(0, len(ROW_COLUMNS))
        self.table.setObjectName("try.eval_rows")
        self.table.setHorizontalHeaderLabels(ROW_COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        hh = self.table.horizontalHeader()
        for c in (1, 2, 3, 4):
            hh.setSectionResizeMode(c, QHeaderView.ResizeMode.Stretch)
        self.table.setSortingEnabled(True)
        self.table.sortItems(0, Qt.SortOrder.AscendingOrder)  # in the order of the examples until a heading is clicked
        self.detail = QTextBrowser()
        self.detail.setObjectName("try.eval_detail")
        self.detail.setPlaceholderText("Click an example to see it in full.")
        self.save_csv = QPushButton("Save as CSV")
        self.save_jsonl = QPushButton("Save as JSONL")
        for b in (self.save_csv, self.save_jsonl):
            b.setEnabled(False)
            b.setToolTip("Evaluate first.")
        self.saved = QLabel("")
        self.saved.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_csv)
        buttons.addWidget(self.save_jsonl)
        buttons.addWidget(self.saved, 1)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.detail)
        split.setSizes([300, 140])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.status)
        lay.addWidget(self.metrics)
        lay.addWidget(split, 1)
        lay.addLayout(buttons)
        self.table.itemSelectionChanged.connect(self._show_selected)
        self.save_csv.clicked.connect(lambda: self.save("csv"))
        self.save_jsonl.clicked.connect(lambda: self.save("jsonl"))

    def _fit_metrics(self) -> None:
        shown = sum(1 for r in range(len(METRICS)) if not self.metrics.isRowHidden(r))
        self.metrics.setFixedHeight(self.metrics.horizontalHeader().sizeHint().height() + 26 * shown + 4)

    def preference_shown(self) -> bool:
        return not self.metrics.isRowHidden(PREFERENCE_ROW)

    # -- state in
    def clear(self, text: str = ""):
        self.rows, self.result = [], None
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        self.table.setSortingEnabled(True)
        for r in range(len(METRICS)):
            for c in range(2):
                self.metrics.setItem(r, c, QTableWidgetItem(""))
        for r in (PREFERENCE_ROW, TOOL_ROW):  # shown again by the next result that has them
            self.metrics.setRowHidden(r, True)
        self._fit_metrics()
        self.detail.clear()
        self.status.setText(text)
        self.saved.setText("")
        for b in (self.save_csv, self.save_jsonl):
            b.setEnabled(False)

    def add_row(self, row) -> None:
        """One evaluated example (core.evaluate.EvalRow), as it comes in."""
        self.rows.append(row)
        t = self.table
        sorting = t.isSortingEnabled()
        t.setSortingEnabled(False)
        r = t.rowCount()
        t.insertRow(r)
        be, te = row.scores.get("base"), row.scores.get("tuned")
        if row.expected_calls is not None:  # a call turn: the calls, and whether each side wrote them right
            expected = calls_text(row.expected_calls)
            base, tuned = (calls_text(row.calls.get(side)) for side in ("base", "tuned"))
            right = [bool(s and s.calls_right) for s in (be, te)]
        else:
            expected, base, tuned = row.expected, row.answers.get("base", ""), row.answers.get("tuned", "")
            right = [bool(s and s.exact) for s in (be, te)]
        cells = [_Item(str(row.index + 1), row.index), _Item(_short(row.prompt)), _Item(_short(expected)),
                 _Item(_short(base)), _Item(_short(tuned)),
                 _Item("yes" if right[0] else "no", int(right[0])), _Item("yes" if right[1] else "no", int(right[1]))]
        cells[0].setData(Qt.ItemDataRole.UserRole, len(self.rows) - 1)
        if row.expected_calls is not None:
            for item in cells[5:]:
                item.setToolTip("A tool call: right when every call of the turn names the right function with "
                                "arguments equal as JSON.")
        for c, item in enumerate(cells):
            t.setItem(r, c, item)
        t.setSortingEnabled(sorting)

    def set_result(self, result) -> None:
        """The whole evaluation (core.evaluate.EvalResult): the metrics table and the save buttons."""
        self.result = result
        if len(self.rows) != len(result.rows):
            self.table.setSortingEnabled(False)
            self.table.setRowCount(0)
            self.rows = []
            for row in result.rows:
                self.add_row(row)
            self.table.setSortingEnabled(True)
        js = result.to_json()
        for c, side in enumerate(("base", "tuned")):
            for r, (key, _label, kind) in enumerate(METRICS):
                item = QTableWidgetItem(metric_text(js[side][key], kind))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.metrics.setItem(r, c, item)
        pref = any(js[side].get("preference_accuracy") is not None for side in ("base", "tuned"))
        self.metrics.setRowHidden(PREFERENCE_ROW, not pref)
        self.metrics.setRowHidden(TOOL_ROW, all(js[side].get("tool_call_accuracy") is None
                                                 for side in ("base", "tuned")))
        self.metrics.verticalHeaderItem(TOOL_ROW).setToolTip(
            "Examples whose tool calls the model writes right: the right functions, arguments equal as JSON, "
            "every call of the turn.")
        if pref:
            self.metrics.verticalHeaderItem(PREFERENCE_ROW).setToolTip(
                "Held-out preference pairs on which the model gives the chosen answer a higher probability than "
                "the rejected one (50%: no preference).")
        self._fit_metrics()
        src = f"the run's {result.source} examples" if result.source in ("test", "validation") else ", ".join(
            Path(p).name for p in result.data)
        done = "" if result.complete else " (stopped: the examples done so far)"
        self.status.setText(f"{len(result.rows)} examples from {src}, answered greedily in "
                            f"{result.seconds:.1f} s{done}. Click a row to see it in full; click a heading to sort.")
        for b in (self.save_csv, self.save_jsonl):
            b.setEnabled(True)
            b.setToolTip("Save the table in the run folder (evaluations/).")

    def metric_texts(self) -> dict:
        """{"base": {key: text}, "tuned": {...}} as shown (for tests and screenshots)."""
        out = {}
        for c, side in enumerate(("base", "tuned")):
            out[side] = {key: (self.metrics.item(r, c).text() if self.metrics.item(r, c) else "")
                         for r, (key, _l, _k) in enumerate(METRICS)}
        return out

    # -- details and saving
    def _show_selected(self):
        items = self.table.selectedItems()
        if not items:
            return
        first = self.table.item(items[0].row(), 0)
        i = first.data(Qt.ItemDataRole.UserRole)
        if i is None or i >= len(self.rows):
            return
        row = self.rows[i]

        def block(title, text):
            return (f"<p style='margin-bottom:2px'><b>{title}</b></p>"
                    f"<pre style='white-space:pre-wrap; margin-top:0'>{html.escape(str(text))}</pre>")

        where = f" ({html.escape(row.file)}, line {row.line})" if row.line else ""
        parts = [f"<p>Example {row.index + 1}{where}</p>", block("Question", row.prompt)]
        if row.expected_calls is not None:
            tools = ", ".join(str(t.get("name", "?")) for t in (row.tools or []))
            parts.append(block(f"Expected calls (functions offered: {tools or 'none'})", calls_text(row.expected_calls)))
            for side, who in (("base", "Original model"), ("tuned", "Fine-tuned model")):
                s = row.scores.get(side)
                verdict = "right" if s and s.calls_right else "wrong"
                parts.append(block(f"{who}: calls ({verdict})", calls_text(row.calls.get(side))))
                parts.append(block(f"{who}: answer as written", row.answers.get(side, "")))
        else:
            parts += [block("Expected", row.expected), block("Original model", row.answers.get("base", "")),
                      block("Fine-tuned model", row.answers.get("tuned", ""))]
        self.detail.setHtml("".join(parts))

    def save(self, kind: str) -> Path | None:
        if self.result is None or self.run_dir is None:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.run_dir / "evaluations" / f"eval-{stamp}.{kind}"
        try:
            (self.result.write_csv if kind == "csv" else self.result.write_jsonl)(path)
        except OSError as exc:
            self.saved.setText(f"Could not save: {exc}")
            return None
        self.saved.setText(f"Saved {path}")
        return path
