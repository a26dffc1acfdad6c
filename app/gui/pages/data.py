"""Step 2, Data: drop files, see what was understood, what is wrong, and how long the examples are."""
from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QEvent, Qt, QTimer
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel,
                               QPlainTextEdit, QProgressBar, QPushButton, QSizePolicy, QSpinBox, QSplitter,
                               QStackedWidget, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from app.gui import jobs as gj
from app.gui import theme
from app.gui.chat_view import ChatView
from app.gui.jobs import PREVIEW_EXAMPLES
from app.gui.pages.base import PAINT_FIRST_MS, AppContext, Page, error_text
from app.gui.widgets import DropZone, TokenHistogram, WrapLabel, panel_label
from core import paths
from core.events import Cancelled

CHAT_FIELDS = {"messages", "conversations", "conversation"}  # files with these need no column mapping


def sample_columns(files, events=None, cancel=None):
    """The first file's columns and first rows (core.data.sample_rows), for the mapping panel."""
    from core.data import sample_rows

    return sample_rows(files, 5, cancel)

FORMAT_LABELS = {
    "preference-prompt": "preference pairs (prompt, chosen, rejected)",
    "preference-sharegpt": "preference pairs (conversations, chosen, rejected)",
    "preference-chat": "preference pairs (messages, chosen, rejected)",
    "preference-alpaca": "preference pairs (instruction, chosen, rejected)",
    "preference-transcript": "preference pairs (chosen and rejected conversations)",
    "kto": "answers labelled desirable or not (KTO)",
    "chat": "chat messages (messages with role and content)",
    "sharegpt": "ShareGPT conversations (from / value)",
    "alpaca": "Alpaca (instruction, input, output)",
    "prompt-completion": "prompt and completion",
    "question-answer": "question and answer",
    "text": "plain text (the model learns the whole text)",
}
DATASET_FILTER = "Datasets (*.jsonl *.ndjson *.json *.csv *.tsv *.txt *.md *.parquet);;All files (*)"
ISSUE_ROLE = Qt.ItemDataRole.UserRole


def format_label(fmt: str) -> str:
    if fmt.startswith("mixed: "):
        return "mixed: " + ", ".join(FORMAT_LABELS.get(f, f).split(" (")[0] for f in fmt[7:].split(", "))
    return FORMAT_LABELS.get(fmt, fmt)


def _section(text: str) -> QLabel:
    return QLabel(f"<b>{text}</b>")


class _WideProgress(QProgressBar):
    """A progress bar that asks for its maximum width (the page sets it), so its text fits: QProgressBar's
    own size hint is a fixed, narrow width whatever the text. It does not measure the text."""

    def sizeHint(self):
        hint = super().sizeHint()
        hint.setWidth(self.maximumWidth())
        return hint


class DataPage(Page):
    """Step 2: read and check the dataset, show it as chat and as training text, its lengths and problems."""

    key = "data"
    title = "2. Add your examples"
    blurb = "Drop files with example conversations. Tuneloom checks every example and tells you exactly what to fix."

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        self.report = None
        # the run that was training when these files were read (its name; "" unnamed), None when none was:
        # the summary says these files are for the next run for as long as they are shown
        self._run_then: str | None = None
        self.tokens = None
        lay = self.layout_

        self._build_loading(lay)
        self._build_panels(lay)
        self._build_results(lay)

        self.drop.files_dropped.connect(lambda ps: self.ctx.open_paths(ps))
        self.drop.clicked.connect(self._open)
        self.sample_btn.clicked.connect(self.load_sample_data)
        self.open_btn.clicked.connect(self._open)
        self.open_dir_btn.clicked.connect(self._open_dir)
        self.cancel_btn.clicked.connect(self.cancel_data)
        self.training_toggle.toggled.connect(self._toggle_training)
        self.max_len.valueChanged.connect(self._max_len_changed)
        self.problems.currentItemChanged.connect(self._problem_picked)

    def _build_loading(self, lay) -> None:
        """The drop zone and the row under it: the sample, open files / folder, the progress and Cancel."""
        self.drop = DropZone()
        lay.addWidget(self.drop, 1)
        row = QHBoxLayout()
        self.sample_btn = QPushButton("Use a sample dataset")
        self.sample_btn.setObjectName("data.sample")
        self.sample_btn.setToolTip("The bundled demo data: 360 short conversations that teach the demo model a "
                                   "structured answer format.")
        self.open_btn = QPushButton("Open files...")
        self.open_dir_btn = QPushButton("Open folder...")
        self.progress = _WideProgress()
        self.progress.setTextVisible(True)
        self.progress.setMaximumWidth(320)
        # 320 px where there is room (its text, "measuring token lengths: 29 of 40 examples", fits), down to 120.
        # Not QSizePolicy.Ignored: a box layout then gives it a width of 0 beside a stretch, the widget keeps its
        # minimum anyway, and the bar lay under Cancel at 1024x700
        self.progress.setMinimumWidth(120)
        self.progress.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.cancel_btn = QPushButton("Cancel")
        for w in (self.sample_btn, self.open_btn, self.open_dir_btn):
            row.addWidget(w)
        row.addStretch(1)
        row.addWidget(self.progress)
        row.addWidget(self.cancel_btn)
        lay.addLayout(row)
        self.set_busy(None)

    def _build_panels(self, lay) -> None:
        """The summary, the column-mapping panel (in its scroll area) and the answers panel."""
        box, self.summary = panel_label("No dataset yet.", "DataSummary")
        lay.addWidget(box)
        # the column-mapping panel (app/gui/mapping_panel.py) goes here: see set_mapping_panel
        self.mapping_host = QWidget()
        self.mapping_host.setObjectName("data.mapping_host")
        self.mapping_layout = QVBoxLayout(self.mapping_host)
        self.mapping_layout.setContentsMargins(0, 0, 0, 0)
        self.mapping_host.hide()
        # in a scroll area: the panel's full height must not become the window's minimum (the window grew by
        # itself when a table loaded)
        from PySide6.QtWidgets import QFrame, QScrollArea

        self.mapping_scroll = QScrollArea()
        self.mapping_scroll.setObjectName("data.mapping_scroll")
        self.mapping_scroll.setWidgetResizable(True)
        self.mapping_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.mapping_scroll.setWidget(self.mapping_host)
        self.mapping_scroll.setMinimumHeight(140)
        self.mapping_scroll.hide()
        lay.addWidget(self.mapping_scroll, 2)
        from app.gui.mapping_panel import MappingPanel

        self.mapping = MappingPanel()
        self.mapping.applied.connect(self._mapping_applied)
        self._load_options: dict = {}
        # preference pairs and placeholders: which answers are trained, what fills the slots (issue 26)
        from app.gui.answers_panel import AnswersPanel

        self.answers = AnswersPanel()
        self.answers.hide()
        self.answers.applied.connect(self._answers_applied)
        lay.addWidget(self.answers)

    def _build_results(self, lay) -> None:
        """The results: the first examples | the token lengths over the problems (hidden until a dataset loads)."""
        # -- results: examples | token lengths over problems
        self.results = QSplitter(Qt.Orientation.Horizontal)
        self._build_examples()  # the left: the first examples
        right = QSplitter(Qt.Orientation.Vertical)  # the right: the token lengths over the problems
        self._build_lengths(right)
        self._build_problems(right)
        right.setStretchFactor(0, 1)
        right.setStretchFactor(1, 1)
        self.right_split = right
        self.results.addWidget(right)
        self.results.setStretchFactor(0, 1)
        self.results.setStretchFactor(1, 1)
        self.results.setSizes([560, 440])
        lay.addWidget(self.results, 4)
        self.results.hide()

    def _build_examples(self) -> None:
        """The left of the results: the first examples, with the switch to their training text."""
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(_section("First examples"))
        top.addStretch(1)
        self.training_toggle = QCheckBox("Show training text")
        self.training_toggle.setToolTip("The examples as the model sees them: its chat template applied, the parts "
                                        "it only reads greyed out, the parts it learns to write highlighted.")
        top.addWidget(self.training_toggle)
        ll.addLayout(top)
        self.preview = ChatView()
        ll.addWidget(self.preview, 1)
        self.results.addWidget(left)

    def _build_lengths(self, right) -> None:
        """The token lengths: their histogram (a placeholder until measured), Max length, what it cuts."""
        hist_box = QWidget()
        hl = QVBoxLayout(hist_box)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.addWidget(_section("Token lengths"))
        hrow = QHBoxLayout()
        hrow.addWidget(QLabel("Max length"))
        self.max_len = QSpinBox()
        self.max_len.setRange(16, 32768)
        self.max_len.setSingleStep(64)
        self.max_len.setValue(512)
        self.max_len.setSuffix(" tokens")
        self.max_len.setToolTip("Examples longer than this are cut off in training. Longer needs more memory.")
        hrow.addWidget(self.max_len)
        hrow.addStretch(1)
        self.histogram = TokenHistogram()
        # until the lengths are measured a placeholder stands in: the plot is laid out and painted
        # only when it has something to show, not in the same moment as the rest of the page
        self.hist_placeholder = QLabel("")
        self.hist_placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hist_placeholder.setWordWrap(True)
        self.hist_stack = QStackedWidget()
        self.hist_stack.addWidget(self.hist_placeholder)
        self.hist_stack.addWidget(self.histogram)
        self.hist_stack.setMinimumHeight(110)  # 150 did not fit 1024x700 with the problem list and 4 lines below
        hl.addWidget(self.hist_stack, 1)
        hl.addLayout(hrow)
        self.trunc_label = WrapLabel("")  # its lines counted in the minimum: the plot above is never covered
        hl.addWidget(self.trunc_label)
        right.addWidget(hist_box)

    def _build_problems(self, right) -> None:
        """The problems: their list and, under it, the record of the one picked as it is in the file."""
        prob_box = QWidget()
        pl = QVBoxLayout(prob_box)
        pl.setContentsMargins(0, 0, 0, 0)
        self.problems_title = _section("Problems")
        self.problems_title.setWordWrap(True)
        pl.addWidget(self.problems_title)
        self.problems = QTreeWidget()
        self.problems.setHeaderLabels(["File", "Line", "Field", "What is wrong"])
        self.problems.setRootIsDecorated(False)
        self.problems.setAlternatingRowColors(True)
        self.problems.setUniformRowHeights(True)
        self.problems.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        hdr = self.problems.header()
        hdr.setStretchLastSection(True)
        for c in (0, 1, 2):
            hdr.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        self.problems.setToolTip("Click a problem to see that example as it is in the file.")
        pl.addWidget(self.problems, 2)
        self.record_view = QPlainTextEdit()
        self.record_view.setReadOnly(True)
        self.record_view.setAcceptDrops(False)
        self.record_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.record_view.setPlaceholderText("Click a problem to see the example as it is in the file.")
        pl.addWidget(self.record_view, 2)
        right.addWidget(prob_box)

    def changeEvent(self, event):
        # the texts carry colours picked for the appearance: pick again
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            if self.report is not None:
                self._show_summary()
            if self.tokens is not None:
                self._show_truncation()
        super().changeEvent(event)

    # -- dialogs
    def _open(self):
        start = self.settings.value("data/dir", "")
        files, _ = QFileDialog.getOpenFileNames(self, "Open dataset files", start, DATASET_FILTER)
        if files:
            self.settings.setValue("data/dir", str(Path(files[0]).parent))
            self.load_data([Path(f) for f in files])

    def _open_dir(self):
        d = QFileDialog.getExistingDirectory(self, "Open a dataset folder", self.settings.value("data/dir", ""))
        if d:
            self.settings.setValue("data/dir", d)
            self.load_data([Path(d)])

    # -- busy state
    def set_busy(self, what: str | None, done=None, total=None):
        """Show progress of the current job (None: nothing running)."""
        busy = what is not None
        self.progress.setVisible(busy)
        self.cancel_btn.setVisible(busy)
        if not busy:
            return
        if done is None or not total:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * min(1.0, done / total)))
        self.progress.setFormat(what[:70])
        self.progress.setToolTip(what)

    # -- loading
    def show_loading(self, files: list[Path]):
        names = ", ".join(f.name for f in files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
        self.summary.setText(f"Checking {html.escape(names)}...")
        self.set_busy("reading")

    def show_error(self, text: str):
        self.report = self.tokens = None
        pal = self.palette()
        self.summary.setText(theme.span("<b>Cannot use this dataset.</b>", "error", pal) + " "
                             + html.escape(text).replace("\n", "<br>"))
        self.problems.clear()
        self.record_view.clear()
        self.preview.clear_all()
        self.results.hide()
        self.drop.set_compact(False)

    def show_dataset(self, report):
        self.report = report
        self.tokens = None
        ds = report.dataset
        self._show_summary()
        self.problems.clear()
        self.record_view.clear()
        items = []
        for issue in ds.issues:
            it = QTreeWidgetItem([issue.file, str(issue.line or ""), issue.field or "", issue.message])
            tip = issue.message + (f"\nWhat to do: {issue.hint}" if issue.hint else "")
            for c in range(4):
                it.setToolTip(c, tip)
            it.setData(0, ISSUE_ROLE, issue)
            items.append(it)
        self.problems.addTopLevelItems(items)
        n = len(ds.issues)
        self.problems_title.setText(f"<b>Problems ({n})</b>" if n else "<b>Problems</b>: none, every example is usable")
        self.record_view.setVisible(bool(n))
        self.problems.setVisible(bool(n))
        h = max(2, self.right_split.height())
        # no problems: the histogram takes the room the problem list would use
        self.right_split.setSizes([h // 2, h - h // 2] if n else [h, 1])
        self.preview.clear_all("")
        self.histogram.set_lengths([], self.max_len.value())
        self.hist_stack.setCurrentWidget(self.hist_placeholder)
        self.trunc_label.setText("")
        self.results.show()
        self.drop.set_compact(True, "Drop other files here to replace these examples")
        # laying out the chat preview is the largest piece of work here: in its own turn of the event
        # loop, after this layout has been painted, so the window never stops for both at once
        QTimer.singleShot(0, lambda r=report: self._fill_preview(r))

    def _fill_preview(self, report):
        if self.report is None or self.report.dataset is not report.dataset:  # (a new split is the same data)
            return
        ds = report.dataset
        if ds.records:
            self.preview.set_records(ds.records[:PREVIEW_EXAMPLES], len(ds.records))
            if self.tokens is not None:
                self.preview.set_training_runs(self.tokens.previews, self.tokens.preview_error or "")
        else:
            self.preview.clear_all("None of the examples can be used: see the problems.")

    def _show_summary(self):
        r = self.report
        ds = r.dataset
        pal = self.palette()
        names = ", ".join(html.escape(n) for n in list(ds.formats)[:4]) + (
            f" and {len(ds.formats) - 4} more" if len(ds.formats) > 4 else "")
        bad = ds.invalid
        usable = len(ds.records)
        parts = [f"<b>{names}</b> &nbsp;·&nbsp; format: <b>{html.escape(format_label(ds.format))}</b>",
                 f"{ds.total:,} examples: <b>{usable:,} usable</b>, "
                 + (theme.span(f"{bad:,} with problems", "error", pal, bold=True) if bad else "none with problems")
                 + (f", {r.duplicates:,} duplicates" if r.duplicates else ", no duplicates")]
        if r.split_error:
            parts.append(theme.span(html.escape(r.split_error), "warning", pal))
        elif usable:
            test = getattr(r, "n_test", 0)
            parts.append(f"Split: <b>{r.n_train:,}</b> to train on, <b>{r.n_valid:,}</b> to check progress "
                         f"({html.escape(r.split_source)})" +
                         (f", <b>{test:,}</b> for the final test ({html.escape(r.test_source)}, never trained on)"
                          if test else ""))
        for note in getattr(ds, "notes", None) or []:
            parts.append(html.escape(str(note)))
        thinks = self.tokens.template_thinks if self.tokens is not None else None
        line = (getattr(r, "reasoning_lines", None) or {}).get(thinks if self.session.model_dir is not None else None)
        if usable and line:
            parts.append(html.escape(line))
        if self._run_then is not None:  # the run goes on (or went on) with the data it read when it started
            named = f" ({html.escape(self._run_then)})" if self._run_then else ""
            lead = (f"A run is training on the data it read when it started{named}:" if self.session.busy("train")
                    else f"The run{named} trained on the data it read when it started:")
            parts.append(theme.span(lead, "warning", pal, bold=True) + " these files are for the next run.")
        self.summary.setText("<br>".join(parts))

    # -- tokens
    def show_tokens_pending(self, text: str = "Measuring token lengths..."):
        self.tokens = None
        self.trunc_label.setText(html.escape(text))
        self.hist_placeholder.setText(f"<span style='color:{theme.muted(self.palette()).name()}'>"
                                      f"{html.escape(text)}</span>")
        self.hist_stack.setCurrentWidget(self.hist_placeholder)
        self.preview.set_training_runs(None, "")

    def show_tokens(self, report):
        self.tokens = report
        self.histogram.set_lengths(report.lengths, self.max_len.value())
        self.hist_stack.setCurrentWidget(self.histogram)
        self.preview.set_training_runs(report.previews, report.preview_error or "")
        self._show_truncation()

    def show_tokens_error(self, text: str):
        self.tokens = None
        self.histogram.set_lengths([], self.max_len.value())
        self.hist_placeholder.setText("")
        self.hist_stack.setCurrentWidget(self.hist_placeholder)
        self.trunc_label.setText(theme.span("Token lengths unavailable: ", "warning", self.palette(), bold=True)
                                 + html.escape(text))
        self.preview.set_training_runs(None, "The training text needs the model's tokenizer: " + text)

    def _show_truncation(self):
        t = self.tokens
        if t is None:
            return
        pal = self.palette()
        n = len(t.lengths)
        cut = self.histogram.truncated
        m = self.max_len.value()
        s = t.stats
        line = (f"Longest {s['max']:,} tokens, median {s['median']:,}, 95% at most {s['p95']:,}. "
                f"{s['trained_share']:.0%} of the tokens are answers the model learns from.<br>")
        if cut:
            lost = sum(k - m for k in t.lengths if k > m)
            line += theme.span(f"{cut:,} of {n:,} examples are longer than {m:,} tokens and would be cut off "
                               f"({lost:,} tokens cut away)", "error", pal, bold=True) + \
                ": raise the max length, or shorten them."
        else:
            line += theme.span(f"No example is longer than {m:,} tokens: nothing is cut off.", "ok", pal)
        self.trunc_label.setText(line)

    @property
    def truncated(self) -> int:
        return self.histogram.truncated

    def _max_len_changed(self, v: int):
        self.histogram.set_max_len(v)
        self.settings.setValue("data/max_seq_len", v)
        self._show_truncation()

    def _toggle_training(self, on: bool):
        self.settings.setValue("data/show_training_text", on)
        self.preview.set_mode("training" if on else "chat")

    # -- problems
    def _problem_picked(self, item, _prev=None):
        if item is None:
            return
        issue = item.data(0, ISSUE_ROLE)
        self.show_problem_record(issue)

    def show_record_text(self, issue, raw=None, error: str | None = None):
        head = f"{issue.file}" + (f", line {issue.line}" if issue.line else "") + (
            f" [{issue.field}]" if issue.field else "")
        lines = [f"{head}: {issue.message}"]
        if issue.hint:
            lines.append(f"What to do: {issue.hint}")
        lines.append("")
        if error:
            lines.append(error)
        elif raw is not None:
            if not raw.lines:
                lines.append("(the file has no such line any more)")
            for k, text in enumerate(raw.lines):
                lines.append(f"{raw.first_line + k:>6} | {text}")
            if raw.pretty:
                lines += ["", "The same record, indented:", raw.pretty]
        self.record_view.setPlainText("\n".join(lines))

    def selected_issue(self):
        it = self.problems.currentItem()
        return it.data(0, ISSUE_ROLE) if it else None


    # -- where the column-mapping panel goes
    def set_mapping_panel(self, widget: QWidget | None) -> None:
        """Put the column-mapping panel (or None: none) under the summary."""
        while self.mapping_layout.count():
            old = self.mapping_layout.takeAt(0).widget()
            if old is not None:
                old.setParent(None)
        if widget is not None:
            self.mapping_layout.addWidget(widget)
        self.mapping_host.setVisible(widget is not None)
        self.mapping_scroll.setVisible(widget is not None)

    # -- the controller: reading the dataset, measuring its tokens, showing a problem's record
    def valid_fraction(self) -> float:
        try:
            return min(0.5, max(0.01, float(self.settings.value("data/valid_fraction", 0.1))))
        except (TypeError, ValueError):
            return 0.1

    def test_fraction(self) -> float:
        """The test share the next run keeps aside (the Train page's option, core.train's default before it)."""
        train = getattr(self.ctx, "pages", {}).get("train")
        try:
            v = train.values().get("test_fraction") if train is not None else None
            if v is None:
                from dataclasses import fields

                from core.train import TrainConfig

                v = next(f.default for f in fields(TrainConfig) if f.name == "test_fraction")
            return min(0.9, max(0.0, float(v)))
        except (TypeError, ValueError, StopIteration):
            return 0.0

    def test_share_changed(self) -> None:
        """The Train page's test share changed: the split shown is worked out again (off the GUI thread)."""
        r = self.report
        if r is None or not r.dataset.records or self.slots.running("data") or self.session.busy("train"):
            return
        tf = self.test_fraction()
        if abs(getattr(r, "test_fraction", 0.0) - tf) < 1e-9:
            return
        self.slots["data-split"].start(gj.resplit, r, self.valid_fraction(), tf, quiet_gc=True,
                                       on_ok=self._resplit)

    def _resplit(self, report) -> None:
        if self.report is None or report.dataset is not self.report.dataset:
            return  # other files were read meanwhile
        self.report = report
        self.session.update(data_report=report)
        self._show_summary()

    def restore_settings(self):
        self.max_len.setValue(self.int_setting("data/max_seq_len", 512))
        from app.gui.settings_dialog import read_bool

        self.training_toggle.setChecked(read_bool(self.settings, "data/show_training_text", False))

    def save_settings(self):
        self.settings.setValue("data/max_seq_len", self.max_len.value())
        self.settings.setValue("data/show_training_text", self.training_toggle.isChecked())

    def reopen_last(self):
        """The dataset of the last session, when the setting says so and its files are still there."""
        from app.gui.settings_dialog import read_bool

        last = self.settings.value("data/paths", [])
        last = [last] if isinstance(last, str) else list(last or [])
        if last and read_bool(self.settings, "data/reopen", True) and all(Path(p).exists() for p in last):
            self.load_data([Path(p) for p in last], switch=False)

    def session_changed(self, names: set):
        if "model_dir" in names and self.session.usable_dataset:
            self.measure_tokens()
        if "jobs" in names and self._run_then is not None and self.report is not None:
            run = self.session.run_dir
            if self.session.busy("train") and (run.name if run else "") != self._run_then:
                self._run_then = None  # another run trains now, on these very files: nothing to warn of
            self._show_summary()  # or the run these files waited for has ended: its note says so

    def load_sample_data(self):
        self.load_data([paths.demo_data_dir()])

    def cancel_data(self):
        for kind in ("data", "tokens", "raw"):
            self.slots[kind].stop()

    def load_data(self, files: list, switch: bool = True, options: dict | None = None):
        """Read ``files``; ``options`` (load_dataset's column mapping, from the mapping panel) keeps the
        panel as it is, while new files without options start from the automatic reading."""
        files = [Path(f) for f in files]
        if switch:
            self.ctx.go_to(1)
        self.cancel_data()
        self.session.update(token_report=None, data_loading=True)
        self.show_loading(files)
        self._load_error = ""
        self._files = files  # what the mapping panel's choice is applied to (even when reading them failed)
        if options is None:
            self._load_options = {}
            self.answers.reset()
            self.session.update(data_options={})
            self.set_mapping_panel(None)
            self._sample_pending = files  # the columns for the mapping panel, once the files are read
        else:
            self._load_options = dict(options)
        self.slots["data"].start(gj.load_data_report, files, self.valid_fraction(), quiet_gc=True,
                                 options=self._load_options or None, test_fraction=self.test_fraction(),
                                 delay_ms=PAINT_FIRST_MS, on_progress=lambda d, t, w: self.set_busy(w, d, t),
                                 on_ok=self._data_loaded, on_failed=self._data_failed, on_ended=self._data_ended)

    def _sampled(self, files, columns_rows):
        """Tables and other non-chat layouts get the column-mapping panel."""
        columns, rows = columns_rows
        if not columns or CHAT_FIELDS & {str(c).lower() for c in columns}:
            return
        self.mapping.set_sample(columns, rows, Path(files[0]).name if files else "")
        ds = self.session.dataset
        self.mapping.show_format(next(iter(ds.formats.values()), None) if ds is not None and ds.formats else None)
        self.set_mapping_panel(self.mapping)

    def _mapping_applied(self, options: dict):
        """The mapping panel's choice: read the same files again with it ({}: automatically)."""
        paths_ = list(getattr(self, "_files", None) or self.session.data_paths or [])
        if not paths_:
            return
        answers = self._answer_options()
        self.session.update(data_options={**(self.mapping.config_fields() if options else {}), **answers})
        self.load_data(paths_, switch=False, options={**options, **answers})

    def _answer_options(self) -> dict:
        return {k: v for k, v in self.answers.options().items() if v}

    def _answers_applied(self, _options: dict):
        """The answers panel's choice (--use chosen, --fill): read the same files again with it."""
        paths_ = list(getattr(self, "_files", None) or self.session.data_paths or [])
        if not paths_:
            return
        answers = self._answer_options()
        keep = {k: v for k, v in (self.session.data_options or {}).items() if k not in ("use", "fill")}
        self.session.update(data_options={**keep, **answers})
        base = {k: v for k, v in self._load_options.items() if k not in ("use", "fill")}
        self.load_data(paths_, switch=False, options={**base, **answers})

    def _data_loaded(self, report):
        self.settings.setValue("data/paths", [str(p) for p in report.paths])
        # data_loading ends in the same update: nobody sees a report while the step still says "checking"
        self.session.update(data_report=report, dataset=report.dataset, data_paths=report.paths, token_report=None,
                            data_loading=False)
        run = self.session.run_dir
        self._run_then = (run.name if run else "") if self.session.busy("train") else None
        self.show_dataset(report)
        ds = report.dataset
        self.answers.setVisible(self.answers.show_dataset(ds))
        if ds is not None and getattr(ds, "formats", None):  # the mapping panel's pickers: the columns in use
            self.mapping.show_format(next(iter(ds.formats.values()), None))
        n_ok, n_bad = len(ds.records), len(ds.issues)
        self.ctx.status(f"{n_ok:,} usable example{'' if n_ok == 1 else 's'}, "
                        f"{n_bad:,} problem{'' if n_bad == 1 else 's'}", 8000)
        self.measure_tokens()

    def _data_failed(self, exc):
        self._load_error = str(exc)
        self.answers.hide()
        self.session.update(dataset=None, data_report=None, token_report=None, data_loading=False)
        if isinstance(exc, Cancelled):
            self.show_error("Stopped before the files were read to the end; nothing was loaded.")
        else:
            self.show_error(error_text(exc))

    def _sample_columns(self):
        files, self._sample_pending = getattr(self, "_sample_pending", None), None
        fmt = getattr(self.session.dataset, "format", "")
        if files and (fmt == "chat" or fmt.startswith("preference-") or fmt == "kto"):
            return  # chat files need no mapping, nor preference data (the answers panel is theirs)
        if files and self.session.dataset is None and "binary" in getattr(self, "_load_error", ""):
            return  # not a text file: no columns to map
        if files:
            # after the read, not beside it (two jobs at once starve the GUI thread); quiet_gc: no full
            # collection on the GUI thread when it ends
            self.slots["data-sample"].start(sample_columns, files, quiet_gc=True,
                                            on_ok=lambda cr, f=files: self._sampled(f, cr))

    def _data_ended(self):
        QTimer.singleShot(PAINT_FIRST_MS, self._sample_columns)
        if not self.slots.running("tokens"):
            self.set_busy(None)
        self.session.update(data_loading=False)
        # a test share changed while the files were read was passed over (test_share_changed waits for
        # the reading): the split shown follows it now
        self.test_share_changed()

    def measure_tokens(self):
        """Token lengths and the training text of the dataset with the chosen model's tokenizer."""
        ds = self.session.dataset
        self.slots["tokens"].stop()
        if ds is None or not ds.records:
            return
        if self.session.model_dir is None:
            self.show_tokens_pending("Token lengths appear once a model is chosen (they depend on its tokenizer).")
            return
        self.show_tokens_pending()
        self.slots["tokens"].start(gj.measure_tokens, ds.records, self.session.model_dir, self.max_len.value(),
                                   thinking=bool(getattr(self.session.data_report, "reasoning", 0)),
                                   quiet_gc=True, delay_ms=3 * PAINT_FIRST_MS,  # after the page and its preview
                                   on_progress=self._tokens_progress, on_ok=self._tokens_done,
                                   on_failed=self._tokens_failed, on_ended=self._tokens_ended)

    def _tokens_progress(self, done, total, what):
        if not self.slots.running("data"):
            self.set_busy(what, done, total)

    def _tokens_done(self, report):
        self.session.update(token_report=report)
        self.show_tokens(report)
        if self.report is not None:
            self._show_summary()  # the reasoning line knows the template now

    def _tokens_failed(self, exc):
        if isinstance(exc, Cancelled):
            self.show_tokens_pending("Token measurement stopped.")
        else:
            self.show_tokens_error(error_text(exc))

    def _tokens_ended(self):
        if not self.slots.running("data"):
            self.set_busy(None)

    def show_problem_record(self, issue):
        """Show the record a problem is about, read from its file off the GUI thread."""
        rep = self.session.data_report
        path = rep.files.get(issue.file) if rep else None
        if path is None or not issue.line:
            self.show_record_text(issue, None, "" if issue.line else "(this problem is about the whole file)")
            return
        self.show_record_text(issue, None, "Reading...")
        self.slots["raw"].start(gj.read_raw_record, path, issue.line,
                                on_ok=lambda raw, i=issue: self.selected_issue() is i and self.show_record_text(i, raw),
                                on_failed=lambda exc, i=issue: self.selected_issue() is i and self.show_record_text(
                                    i, None, f"Cannot read the file: {error_text(exc)}"))
