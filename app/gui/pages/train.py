"""Step 3, Train: presets, every option with its help, an estimate before starting, then
Start / Pause / Resume / Stop with the live curve, the figures beside it and the run's log.

Presets, defaults and the options' help come from ``core.train`` (PRESETS, PRESET_TEXT, the
TrainConfig field metadata): the CLI's ``tuneloom train --help`` says the same.
"""
from __future__ import annotations

import html
import json
import math
import sys
from dataclasses import MISSING, asdict, fields
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QGridLayout, QHBoxLayout, QLabel,
                               QLineEdit, QListWidget, QListWidgetItem, QMessageBox, QPlainTextEdit, QProgressBar,
                               QPushButton, QSizePolicy, QSpinBox, QSplitter, QVBoxLayout, QWidget)

from app.gui import jobs as gj
from app.gui import theme
from app.gui.notify import notify
from app.gui.pages.base import AppContext, Page, error_text
from app.gui.plots import TrainPlot
from app.gui.run_bar import LIVE_STEPS, RunBar, checkpoint_step, other_writer, state_words, writer_words
from app.gui.widgets import Panel, Section  # Section: ▶ closed, ▼ open (superqt's default points up)
from app.session import TRAIN, TRY
from core import runs, units
from core.estimate import TrainEstimate, estimate_training
from core.options import ADVANCED, OPTIONS
from core.events import Cancelled
from core.presets import WARN_SHARE, preset_values
from core.train import (DEFAULT_PRESET, MIN_STEPS, OPTION_RANGES, PRESET_TEXT, PRESETS, TrainConfig, fit_to_data,
                        option_allows, option_help, option_label, preset_config)

ON_MAC = sys.platform == "darwin"


def _machines(text: str) -> str:
    """Words about Macs, for this machine: "this computer" off a Mac."""
    if ON_MAC:
        return text
    return text.replace("this Mac", "this computer").replace("Every Mac", "Every computer").replace(
        "each Mac", "each computer").replace("one Mac", "one computer").replace("Macs", "computers")


GUI_PRESET = DEFAULT_PRESET  # a fresh window starts with the default preset (core.presets says why)
PAUSE_TIP = "Pause after the current step: nothing is computed until you resume."
GROUP_PAUSE_TIP = ("A run on several Macs can be stopped (and resumed later from its checkpoint) but not paused: "
                   "the Macs wait on each other in every step.")
# options the Train page does not show: the model and the data are steps 1 and 2, the run folder is made
# here, the validation share is a setting (it changes the Data page's split), skip_invalid sits beside Start;
# how records are read from the files (column mapping, templates, a system prompt) belongs to the Data step,
# which puts it in session.data_options
HIDDEN = {"model", "data", "out", "mapping", "valid_fraction", "skip_invalid", "user_template",
          "assistant_template", "system_prompt"}
# the Advanced form's options, their order, bounds, steps and choices: core.options.OPTIONS
ADVANCED_ORDER = ADVANCED
# the options only one training method reads: enabled while that method is chosen
METHOD_OPTIONS = {name: OPTIONS[name].method for name in ADVANCED if OPTIONS[name].method}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def about(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"about {max(5, int(round(seconds / 5)) * 5)} seconds"
    if seconds < 90 * 60:
        return f"about {int(round(seconds / 60))} minutes"
    h, m = divmod(int(round(seconds / 60)), 60)
    return f"about {h} h {m:02d} min"


def fmt_memory(n: float) -> str:
    """A memory figure, 23.5 GB: core.units.fmt_memory, as the Model page, the log and the CLI write it."""
    return units.fmt_memory(n) if n else "-"


class SciSpin(QDoubleSpinBox):
    """A positive number shown as 2e-4 / 0.0001, stepping by halves and doubles (for learning rates)."""

    def __init__(self, lo: float, hi: float):
        super().__init__()
        self.setDecimals(12)
        self.setRange(lo, hi)

    def textFromValue(self, v: float) -> str:
        return f"{v:g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text, pos):
        from PySide6.QtGui import QValidator

        try:
            v = float(text)
            return (QValidator.State.Acceptable if self.minimum() <= v <= self.maximum()
                    else QValidator.State.Intermediate, text, pos)
        except ValueError:
            return QValidator.State.Intermediate, text, pos

    def stepBy(self, steps: int):
        self.setValue(self.value() * (2.0 ** steps))


class RuleSpin(QSpinBox):
    """A whole-number field that offers only what the config accepts (core.train.option_allows): an option
    whose valid values have a gap (num_layers and valid_batches: -1 for all, else at least 1) skips it when
    stepping and does not accept it typed."""

    def __init__(self, name: str):
        super().__init__()
        self.option = name

    def allows(self, v: int) -> bool:
        return self.minimum() <= v <= self.maximum() and option_allows(self.option, v)

    def stepBy(self, steps: int):
        v, step = self.value(), self.singleStep() * (1 if steps > 0 else -1)
        for _ in range(abs(steps)):
            nxt = v + step
            while self.minimum() <= nxt <= self.maximum() and not self.allows(nxt):
                nxt += 1 if step > 0 else -1
            if not self.allows(nxt):
                break
            v = nxt
        self.setValue(v)

    def validate(self, text, pos):
        from PySide6.QtGui import QValidator

        state, text, pos = super().validate(text, pos)
        if state == QValidator.State.Acceptable and not self.allows(self.valueFromText(text)):
            state = QValidator.State.Intermediate
        return state, text, pos

    def fixup(self, text):
        v = self.valueFromText(text) if text.strip().lstrip("-").isdigit() else self.value()
        up = next((u for u in range(v, v + 1000) if self.allows(u)), None)
        return self.textFromValue(up if up is not None else self.value())

    def setValue(self, v: int):
        if not self.allows(int(v)):  # e.g. a setting saved before the ranges matched the config
            v = next((u for u in range(int(v), int(v) + 1000) if self.allows(u)), self.minimum())
        super().setValue(int(v))


def form_range(name: str, kind: str) -> tuple:
    """The form's range for an option: the config's lowest accepted value (OPTION_RANGES, as
    TrainConfig.validate checks it; an accepted special value below it, e.g. -1 for all, counts), capped by
    the option's form bounds where the config has no cap or a wider one."""
    lo, hi = OPTIONS[name].form or ((0, 10_000_000) if kind == "int" else (0.0, 1e6))
    rule = OPTION_RANGES.get(name)
    if rule is None or name == "iters":  # iters: 0 in the form is the config's None ("auto")
        return lo, hi
    rlo, rhi, lo_ok, hi_ok, special, _words = rule
    tiny = 1 if kind == "int" else 10 ** -3
    numbers = [v for v in special if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if rlo is not None:  # the form may be stricter than the config (a longest sequence of 16), never looser
        lo = max(lo, rlo)
        if lo == rlo and not lo_ok:
            lo += tiny
    if rhi is not None:
        hi = min(hi, rhi if hi_ok else rhi - tiny)
    return min([lo] + numbers), hi


def preset_of(config: dict) -> str:
    """The preset a run's config was made from: the one whose values it keeps the most of (a run's own
    config.json does not name it)."""
    def kept(key):
        return sum(1 for k, v in preset_values(key, config.get("method")).items() if config.get(k) == v)
    return max(PRESETS, key=lambda k: (kept(k), k == DEFAULT_PRESET))


class OptionsForm(QWidget):
    """One widget per TrainConfig option, labelled and explained from the field's metadata."""

    def __init__(self, on_change):
        super().__init__()
        self.widgets: dict[str, QWidget] = {}
        self.kinds: dict[str, str] = {}
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(10)
        # the Advanced options of core.options, in its order; the fields for the data (thinking, templates) or
        # for other panels are not Advanced options and stay out
        row = col = 0
        for name in ADVANCED_ORDER:
            kind = OPTIONS[name].kind
            if name in HIDDEN or kind not in ("bool", "int", "float", "str"):
                continue
            w = self._make(name, kind)
            tip = option_help(name)
            w.setToolTip(tip)
            w.setObjectName(f"train.option.{name}")
            self.widgets[name], self.kinds[name] = w, kind
            if kind == "bool":
                w.setText(option_label(name))
                grid.addWidget(w, row, col * 2, 1, 2)
            else:
                lab = QLabel(option_label(name))
                lab.setToolTip(tip)
                lab.setBuddy(w)
                grid.addWidget(lab, row, col * 2)
                grid.addWidget(w, row, col * 2 + 1)
            self._connect(w, kind, on_change)
            col += 1
            if col == 3:
                row, col = row + 1, 0
        for c in (1, 3, 5):
            grid.setColumnStretch(c, 1)

    def _make(self, name: str, kind: str) -> QWidget:
        lo, hi = form_range(name, kind)
        if kind == "bool":
            return QCheckBox()
        if kind == "int":
            w = RuleSpin(name) if name in OPTION_RANGES and name != "iters" else QSpinBox()
            w.setRange(int(lo), int(hi))
            if isinstance(w, RuleSpin) and lo in OPTION_RANGES[name][4]:
                w.setSpecialValueText("all")  # -1: every block, every validation batch
            w.setSingleStep(int(OPTIONS[name].step or 1))
            if name == "iters":
                w.setSpecialValueText("auto (from passes)")
            return w
        if kind == "float":
            if name == "lr":
                return SciSpin(lo, hi)
            w = QDoubleSpinBox()
            w.setDecimals(3)
            w.setRange(lo, hi)
            w.setSingleStep(OPTIONS[name].step or 0.1)
            return w
        if OPTIONS[name].choices:
            w = QComboBox()
            w.addItems(list(OPTIONS[name].choices))
            return w
        return QLineEdit()

    @staticmethod
    def _connect(w, kind, fn):
        if isinstance(w, QCheckBox):
            w.toggled.connect(lambda *_: fn())
        elif isinstance(w, QComboBox):
            w.currentTextChanged.connect(lambda *_: fn())
        elif isinstance(w, QLineEdit):
            w.textChanged.connect(lambda *_: fn())
        else:
            w.valueChanged.connect(lambda *_: fn())

    def values(self) -> dict:
        out = {}
        for name, w in self.widgets.items():
            if isinstance(w, QCheckBox):
                out[name] = w.isChecked()
            elif isinstance(w, QComboBox):
                out[name] = w.currentText()
            elif isinstance(w, QLineEdit):
                out[name] = w.text().strip() or _default(name)
            elif isinstance(w, QSpinBox):
                out[name] = w.value() or None if name == "iters" else w.value()
            else:
                out[name] = float(w.value())
        return out

    def set_values(self, values: dict) -> None:
        for name, v in values.items():
            w = self.widgets.get(name)
            if w is None:
                continue
            if isinstance(w, QCheckBox):
                w.setChecked(bool(v))
            elif isinstance(w, QComboBox):
                if w.findText(str(v)) >= 0:
                    w.setCurrentText(str(v))
            elif isinstance(w, QLineEdit):
                w.setText("" if v is None else str(v))
            elif isinstance(w, QSpinBox):
                w.setValue(int(v or 0))
            else:
                w.setValue(float(v))


def _shown(v) -> str:
    """An option's value in the "changed from the preset" line."""
    if v is None:
        return "auto"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _default(name: str):
    f = {f.name: f for f in fields(TrainConfig)}[name]
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


class TrainPage(Page):
    key = "train"
    title = "3. Train"
    blurb = ("Teach the model your examples. Watch the loss fall: lower means the model predicts your answers "
             "better. Pause or stop at any time; nothing is lost.")

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        self.run_bar = RunBar(ctx, "train", "Train shows this run")  # the current run, named
        self.layout_.addWidget(self.run_bar)
        lay = self.layout_
        self.slot = self.slots["train"]
        self._applying = False
        self._close_when_done = False
        self.last_report = None
        self._stats_dirty = False
        self.result_state = "idle"  # idle / running / paused / done / stopped / failed
        self.result_problems: list[str] = []  # why a finished run probably learned little (its banner warns)
        self.loss_summary: runs.LossSummary | None = None  # the last finished run's, as its banner says

        self._build_options(lay)
        self._build_controls(lay)
        self._build_plot(lay)

        self._estimate_timer = QTimer(self)
        self._estimate_timer.setSingleShot(True)
        self._estimate_timer.setInterval(300)
        self._estimate_timer.timeout.connect(self.update_estimate)
        self._stats_timer = QTimer(self)
        self._stats_timer.setInterval(100)
        self._stats_timer.timeout.connect(self._show_stats)
        self._stats_timer.start()
        self.estimate_value: TrainEstimate | None = None
        self._fit_notes: list[str] = []
        self._live_run: Path | None = None  # the run this page trains now (shown live, not read from disk)
        self._user_options: tuple[str, dict] | None = None  # the form as the user left it, while a run's is shown
        self.shown_run = None  # the RunInfo of the current run as shown when idle
        self._estimate_pending = False

        self.preset.currentIndexChanged.connect(self._preset_chosen)
        self.start_btn.clicked.connect(self.start)
        self.pause_btn.clicked.connect(self.toggle_pause)
        self.stop_btn.clicked.connect(self.stop)
        self.resume_btn.clicked.connect(lambda: self.session.run_dir and self.resume_run(self.session.run_dir))
        self.next_btn.clicked.connect(lambda: self.ctx.go_to(TRY))
        self.smoothing.valueChanged.connect(self.plot.set_smoothing)
        self.show_lr.toggled.connect(self.plot.show_learning_rate)
        self.fit_btn.clicked.connect(self.plot.fit)
        self.slot.state_changed.connect(lambda _s: self.refresh_controls())
        self.set_preset(GUI_PRESET)
        self._show_result(None)
        self.refresh_controls()

    def _build_options(self, lay) -> None:
        """The preset, the method row, the Advanced options and the Several Macs panel."""
        # -- preset and options
        top = QHBoxLayout()
        top.addWidget(QLabel("<b>Preset</b>"))
        self.preset = QComboBox()
        self.preset.setObjectName("train.preset")
        for key in PRESETS:
            self.preset.addItem(PRESET_TEXT[key][0], key)
        self.preset.setToolTip("A set of options for a kind of run; open Advanced to see or change each one.")
        top.addWidget(self.preset)
        self.preset_line = QLabel()
        self.preset_line.setWordWrap(True)
        self.preset_line.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        top.addWidget(self.preset_line, 1)
        lay.addLayout(top)
        # preference pairs in the data: how to train on them (issue 30)
        from core.train.preference import METHOD_TEXT

        mrow = QHBoxLayout()
        self.method_label = QLabel("<b>Method</b>")
        mrow.addWidget(self.method_label)
        self.method = QComboBox()
        self.method.setObjectName("train.method")
        for key, label in (("sft", "Supervised on the chosen answers"), ("dpo", METHOD_TEXT["dpo"][0]),
                           ("orpo", METHOD_TEXT["orpo"][0])):
            self.method.addItem(label, key)
            self.method.setItemData(self.method.count() - 1, METHOD_TEXT[key][1], Qt.ItemDataRole.ToolTipRole)
        mrow.addWidget(self.method)
        self.method_line = QLabel()
        self.method_line.setObjectName("train.method_line")
        self.method_line.setWordWrap(True)
        self.method_line.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        mrow.addWidget(self.method_line, 1)
        self.method_row = QWidget()
        self.method_row.setLayout(mrow)
        mrow.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.method_row)
        self.method.currentIndexChanged.connect(lambda _i: self._method_changed())
        self._method_changed()
        self.advanced = Section("Advanced: every option")
        self.advanced.setObjectName("train.advanced")
        self.options = OptionsForm(self._options_changed)
        self.advanced.addWidget(self.options)
        self.advanced.collapse(animate=False)
        lay.addWidget(self.advanced)
        self.iters = self.options.widgets["iters"]  # the step count, for scripts and tests
        self._build_hosts_panel(lay)

    def _build_controls(self, lay) -> None:
        """The estimate, the run's buttons, its result and the memorising banner."""
        # -- estimate, warning
        self.estimate = QLabel("")
        self.estimate.setObjectName("train.estimate")
        self.estimate.setWordWrap(True)
        lay.addWidget(self.estimate)

        # -- controls
        row = QHBoxLayout()
        self.start_btn = QPushButton("Start training")
        self.start_btn.setObjectName("train.start")
        self.pause_btn = QPushButton("Pause")
        self.pause_btn.setObjectName("train.pause")
        self.pause_btn.setToolTip(PAUSE_TIP)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setObjectName("train.stop")
        self.stop_btn.setToolTip("Stop after the current step and keep a checkpoint: the run can be resumed later.")
        self.skip_invalid = QCheckBox("Skip examples with problems")
        self.skip_invalid.setToolTip(option_help("skip_invalid"))
        self.progress = QProgressBar()
        self.progress.setObjectName("train.progress")
        self.progress.setTextVisible(True)
        self.progress.hide()  # an empty bar looks like a text field: shown once there is a run to show
        for w in (self.start_btn, self.pause_btn, self.stop_btn):
            row.addWidget(w)
        row.addWidget(self.skip_invalid)
        row.addWidget(self.progress, 1)
        lay.addLayout(row)
        self.status = QLabel("")
        self.status.setObjectName("train.status")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.result_box = Panel()
        rl = QHBoxLayout(self.result_box)
        rl.setContentsMargins(10, 6, 10, 6)
        rl.addWidget(self.status, 1)
        self.next_btn = QPushButton("Try it")
        self.next_btn.setToolTip("Ask the original and the fine-tuned model the same question (step 4).")
        self.resume_btn = QPushButton("Resume")
        self.resume_btn.setObjectName("train.resume")
        self.resume_btn.setToolTip("Continue this run from its last checkpoint; the curve goes on where it stopped.")
        rl.addWidget(self.resume_btn, 0, Qt.AlignmentFlag.AlignTop)
        rl.addWidget(self.next_btn, 0, Qt.AlignmentFlag.AlignTop)
        lay.addWidget(self.result_box)
        self.result_box.hide()  # until there is something to say
        # issue 28: memorising (validation loss rising while training loss falls) as a banner of its own, live
        self.memo_banner = Panel()
        self.memo_banner.setObjectName("train.memorising_banner")
        ml = QHBoxLayout(self.memo_banner)
        ml.setContentsMargins(10, 6, 10, 6)
        self.memo_text = QLabel("")
        self.memo_text.setObjectName("train.memorising")
        self.memo_text.setWordWrap(True)
        self.memo_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        ml.addWidget(self.memo_text, 1)
        lay.addWidget(self.memo_banner)
        self.memo_banner.hide()

    def _build_plot(self, lay) -> None:
        """The loss plot with its controls, the figures beside it and the log under them."""
        # -- plot | figures, log under
        split = QSplitter(Qt.Orientation.Vertical)
        upper = QSplitter(Qt.Orientation.Horizontal)
        plot_box = QWidget()
        pl = QVBoxLayout(plot_box)
        pl.setContentsMargins(0, 0, 0, 0)
        self.plot = TrainPlot()
        pl.addWidget(self.plot, 1)
        prow = QHBoxLayout()
        prow.addWidget(QLabel("Smoothing"))
        self.smoothing = QDoubleSpinBox()
        self.smoothing.setObjectName("train.smoothing")
        self.smoothing.setRange(0.0, 0.999)
        self.smoothing.setDecimals(2)
        self.smoothing.setSingleStep(0.05)
        self.smoothing.setValue(self.plot.smoothing)
        self.smoothing.setToolTip("How much the bold line averages out the step-to-step noise (0: none).")
        self.show_lr = QCheckBox("Right axis:")
        self.show_lr.setObjectName("train.show_lr")
        self.show_lr.setChecked(True)
        self.show_lr.setToolTip("Show the series chosen beside (dashed; the learning rate unless a preference run's "
                                "rewards are picked) on the right-hand axis.")
        self.fit_btn = QPushButton("Fit")
        self.fit_btn.setToolTip("Show the whole curve (after zooming or panning with the mouse).")
        self.right_series = QComboBox()
        self.right_series.setObjectName("train.right_series")
        for key, label in (("learning_rate", "Learning rate"), ("reward_margin", "Reward margin"),
                           ("reward_accuracy", "Chosen wins")):
            self.right_series.addItem(label, key)
        self.right_series.setToolTip("What the right-hand axis shows. For a preference run (DPO, ORPO): the "
                                     "reward margin (how much more the model now prefers the chosen answer than "
                                     "the original did) or the share of pairs whose chosen answer wins.")
        self.right_series.currentIndexChanged.connect(
            lambda _i: self.plot.show_right(self.right_series.currentData() or "learning_rate"))
        for w in (self.smoothing, self.show_lr, self.right_series, self.fit_btn):
            prow.addWidget(w)
        prow.addStretch(1)
        pl.addLayout(prow)
        upper.addWidget(plot_box)
        stats = QWidget()
        sg = QGridLayout(stats)
        sg.setContentsMargins(8, 0, 0, 0)
        self.stat: dict[str, QLabel] = {}
        for i, (key, label) in enumerate((("step", "Step"), ("epoch", "Pass"), ("loss", "Training loss"),
                                          ("valid", "Validation loss"), ("speed", "Tokens/s"),
                                          ("elapsed", "Elapsed"), ("eta", "Time left"), ("memory", "Peak memory"))):
            name = QLabel(label)
            value = QLabel("-")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            # a fixed size: a figure that changes every step must not lay the page out again each time
            value.setMinimumWidth(120)
            value.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
            f = value.font()
            f.setBold(True)
            value.setFont(f)
            sg.addWidget(name, i, 0)
            sg.addWidget(value, i, 1)
            self.stat[key] = value
        self.eta = self.stat["eta"]
        self.eta.setObjectName("train.eta")
        sg.setRowStretch(len(self.stat), 1)
        stats.setMinimumWidth(190)
        upper.addWidget(stats)
        upper.setStretchFactor(0, 1)
        split.addWidget(upper)
        self.log = QPlainTextEdit()
        self.log.setObjectName("train.log")
        self.log.setReadOnly(True)
        self.log.setAcceptDrops(False)
        self.log.setMaximumBlockCount(5000)
        self.log.setPlaceholderText("The run's messages appear here.")
        split.addWidget(self.log)
        split.setStretchFactor(0, 4)
        split.setStretchFactor(1, 1)
        lay.addWidget(split, 1)

    # -- presets and options ------------------------------------------------------------------
    def option(self, name: str) -> QWidget:
        return self.options.widgets[name]

    def preset_key(self) -> str:
        return self.preset.currentData() or DEFAULT_PRESET

    def set_preset(self, key: str) -> None:
        i = self.preset.findData(key)
        if i < 0:
            return
        if i == self.preset.currentIndex():
            self._preset_chosen(i)
        else:
            self.preset.setCurrentIndex(i)

    def _preset_chosen(self, _i=None):
        self._applying = True
        try:
            self.options.set_values(preset_config(self.preset_key(), self.method_key()))
        finally:
            self._applying = False
        self._preset_method = self.method_key()
        self._method_preset(self._preset_method)  # (enables the options this method reads)
        self._options_changed()

    def values(self) -> dict:
        return self.options.values()

    def n_train(self) -> int:
        """Training examples of the current dataset (the validation share left out)."""
        s = self.session
        rep = s.data_report
        if getattr(s.dataset, "pairs", 0) and self.method_key() != "sft":  # preference tuning trains on the pairs
            return max(1, round(s.dataset.pairs * 0.9))
        if rep is not None and rep.n_train:
            return int(rep.n_train)
        return len(s.dataset.records) if s.usable_dataset else 0

    def fitted_values(self) -> tuple[dict, list[str]]:
        """The options as a run will use them on this dataset (core.train.fit_to_data: enough steps, a warm-up
        of at most a tenth of the run), and a sentence per change."""
        vals = self.values()
        if not self.session.usable_dataset:
            return vals, []
        return fit_to_data(vals, self.n_train())

    def changed_options(self) -> dict:
        """The options that differ from the preset's values."""
        base = preset_config(self.preset_key(), self.method_key())
        return {k: v for k, v in self.values().items() if base.get(k) != v}

    def _options_changed(self):
        if self._applying:
            return
        label, trade = PRESET_TEXT[self.preset_key()]
        changed = self.changed_options()
        muted = theme.muted(self.palette()).name()
        text = html.escape(trade)
        # always a second line, so that changing an option does not push the panel below down under the pointer
        if changed:
            text += (f"<br><span style='color:{muted}'>Changed from {html.escape(label)}: "
                     + html.escape(", ".join(f"{option_label(k).lower()} {_shown(v)}" for k, v in changed.items()))
                     + "</span>")
        else:
            text += f"<br><span style='color:{muted}'>Every option as {html.escape(label)} sets it.</span>"
        self.preset_line.setText(text)
        data = self.ctx.pages.get("data")
        if data is not None:  # one max length: the Data page's histogram shows what will be cut off
            v = self.values().get("max_seq_len")
            if v and data.max_len.value() != v:
                data.max_len.setValue(int(v))
            data.test_share_changed()  # the split the Data page shows counts this test share
        self._estimate_timer.start()

    def max_len_changed(self, v: int):
        """The Data page's max length moved: it is this option too."""
        w = self.options.widgets.get("max_seq_len")
        if w is not None and w.value() != v:
            w.setValue(v)

    # -- settings
    def restore_settings(self):
        key = str(self.settings.value("train/preset", GUI_PRESET))
        self.set_preset(key if key in PRESETS else GUI_PRESET)
        try:
            changed = json.loads(str(self.settings.value("train/options", "{}")))
        except ValueError:
            changed = {}
        if isinstance(changed, dict):
            self.options.set_values(changed)
        from app.gui.settings_dialog import read_bool

        self.skip_invalid.setChecked(read_bool(self.settings, "train/skip_invalid", False))
        self.hosts_edit.setText(str(self.settings.value("train/hosts", "") or ""))

    def save_settings(self):
        self.settings.setValue("train/preset", self.preset_key())
        self.settings.setValue("train/options", json.dumps(self.changed_options()))
        self.settings.setValue("train/skip_invalid", self.skip_invalid.isChecked())
        self.settings.setValue("train/hosts", self.hosts_edit.text().strip())

    # -- what can be done now
    def session_changed(self, names: set):
        if names & {"model_dir", "dataset", "data_loading", "model_checking", "jobs", "run_dir", "token_report",
                    "data_report"}:
            self.refresh_controls()
        if names & {"model_dir", "data_report", "token_report"}:
            self._estimate_timer.start()
        if "run_dir" in names:
            self.show_current_run()

    # -- the current run, when none is training: its curve, its settings, how it ended, the way on
    def show_current_run(self):
        """Show the session's current run (picked in the history, or the last one after a restart): its curve,
        figures and banner, read off the GUI thread. A run this page starts or resumes is shown live instead."""
        rd = self.session.run_dir
        if rd is None or self.slot.state != "idle" or rd == self._live_run:
            return
        self.slots["train.show"].start(gj.load_run, rd, on_ok=lambda info: self._show_run(rd, info))

    def _show_run(self, run_dir: Path, info):
        if info is None or self.session.run_dir != run_dir or self.slot.state != "idle" or run_dir == self._live_run:
            return
        self.shown_run = info
        self._show_memorising_of(info.status.get("memorising"))
        self.plot.clear_data()
        self.plot.load_metrics(info.metrics or [])
        self.plot.set_total(info.total_steps)
        self.log.clear()
        self.last_report = None
        self.result_problems = []
        if info.resumable:  # Resume continues it with its own settings: the form shows them (not the next run's)
            self._show_config(info.config)
            self._user_options = None  # nothing to restore: the form now starts from this run's settings
        metrics = info.metrics or []
        last = next((m for m in reversed(metrics) if "train_loss" in m), None)
        for k in self.stat:
            self.stat[k].setText("-")
        total = info.total_steps
        self.stat["step"].setText(f"{info.steps:,} / {total:,}" if total else f"{info.steps:,}")
        if last is not None:
            self.stat["loss"].setText(f"{last['train_loss']:.4f}")
            if last.get("epoch") is not None:
                self.stat["epoch"].setText(f"{float(last['epoch']):.2f}")
            if last.get("peak_memory"):
                self.stat["memory"].setText(fmt_memory(last["peak_memory"]))
            if last.get("elapsed") is not None:
                self.stat["elapsed"].setText(fmt_duration(last["elapsed"]))
        vs, vv = runs.series(metrics, "valid_loss")
        if vv:
            self.stat["valid"].setText(f"{vv[-1]:.4f} @{vs[-1]}")
        name = html.escape(info.title)
        st = info.state
        self.progress.setVisible(bool(info.steps))  # no step yet: no bar (an empty one looks like a text field)
        self.progress.setRange(0, max(1, total or 1))
        self.progress.setValue(min(info.steps, total or info.steps))
        self.progress.setFormat(f"step {info.steps:,} of {total:,}" if total else "")
        if st == "done":
            self._finished(info.path, metrics, info.steps, info.config, name=info.title)
        elif info.resumable:
            ck = checkpoint_step(info)
            why = {"interrupted": "was interrupted (the app or the computer stopped)",
                   "cancelled": "was stopped", "failed": "failed"}.get(st, "stopped")
            redo = info.steps - ck if ck is not None and info.steps > ck else 0
            text = (f"<b>{name}</b> {why} at step {info.steps:,}" + (f" of {total:,}" if total else "") +
                    f". <b>Resume</b> continues from step {ck:,}, its last checkpoint" +
                    (f" (the {redo:,} steps after it are trained again)" if redo else "") + ".")
            if info.error:
                text += "<br>" + html.escape(info.error)
            self.eta.setText("stopped")
            self.result_state = "stopped"
            self.status.setText(text)
            self._paint_result("stopped")
        elif st == "running":
            self.result_state = "idle"
            pid = other_writer(info.path, self.session) or info.status.get("pid")
            self.status.setText(f"<b>{name}</b> is training in another process (pid {pid}); "
                                "open it again when it has finished.")
            self._paint_result(None)
        else:
            self.result_state = "failed" if st == "failed" else "idle"
            text = f"<b>{name}</b>: {html.escape(state_words(info, self.session))}"
            if info.error:
                text += "<br>" + html.escape(info.error)
            text += " It has no checkpoint to resume from."
            self.status.setText(text)
            self._paint_result(self.result_state if st == "failed" else None)
        self.result_box.show()
        self.refresh_controls()

    def _show_config(self, config: dict) -> None:
        """Put a run's own settings in the preset box and the options (while it trains, or when it is resumed):
        the user's own choice comes back when the run ends."""
        if self._user_options is None:
            self._user_options = (self.preset_key(), self.values())
        self._preset_method = config.get("method") or "sft"  # the run's own values stay as they are
        self.method.setCurrentIndex(max(0, self.method.findData(config.get("method") or "sft")))
        self._set_form(preset_of(config), {k: v for k, v in config.items() if k in self.options.widgets})

    def _set_form(self, key: str, values: dict) -> None:
        self._applying = True
        try:
            i = self.preset.findData(key)
            if i >= 0:
                self.preset.blockSignals(True)  # not _preset_chosen: it would lay out the form twice over
                self.preset.setCurrentIndex(i)
                self.preset.blockSignals(False)
            self.options.set_values(preset_config(key))
            self.options.set_values(values)
        finally:
            self._applying = False
        self._options_changed()

    def _restore_user_options(self) -> None:
        if self._user_options is not None:
            key, values = self._user_options
            self._user_options = None
            self._set_form(key, values)

    def blocker(self) -> str | None:
        why = self.session.train_blocker()
        if why:
            return why
        est = self.estimate_value
        if est is not None and not est.fits:
            return f"This run would not fit in memory. {est.fix}"
        return None

    def refresh_controls(self):
        state = self.slot.state
        busy = state != "idle"
        why = self.blocker() if not busy else "A run is in progress: pause or stop it first."
        self.start_btn.setEnabled(why is None)
        self.start_btn.setToolTip(why or "Start a new run with these options.")
        self.pause_btn.setEnabled(state in ("running", "pausing", "paused") and not self._group_run)
        self.pause_btn.setToolTip(GROUP_PAUSE_TIP if self._group_run else PAUSE_TIP)
        self.pause_btn.setText("Resume" if state in ("pausing", "paused") else "Pause")
        self.stop_btn.setEnabled(state in ("running", "pausing", "paused"))
        for w in (self.preset, self.advanced, self.skip_invalid, self.hosts_box, self.method):
            w.setEnabled(not busy)
        self.method_row.setVisible(bool(getattr(self.session.dataset, "pairs", 0)) or self.method_key() != "sft")
        info = runs.RunInfo.load(self.session.run_dir) if self.session.run_dir is not None and not busy else None
        resumable = bool(info is not None and info.resumable)
        writer = other_writer(info.path, self.session) if info is not None else None
        self.resume_btn.setVisible(resumable or writer is not None)
        self.resume_btn.setEnabled(writer is None)  # no second writer on a run another process trains
        if writer is not None:
            self.resume_btn.setText("Resume")
            self.resume_btn.setToolTip(writer_words(writer)[0].upper() + writer_words(writer)[1:] + ".")
        elif resumable:
            ck = checkpoint_step(info)
            self.resume_btn.setText(f"Resume from step {ck:,}" if ck is not None else "Resume")
            self.resume_btn.setToolTip(f"Continue {info.title} from its last checkpoint (step {ck:,} of "
                                       f"{info.total_steps or '?'}); the curve goes on from there.")
        self.next_btn.setVisible(not busy and self.session.trained)
        if state == "pausing":
            self.status.setText("Pausing after this step...")
        elif state == "paused":
            r = self.last_report
            self.status.setText(f"Paused{f' at step {r.step} of {r.total}' if r else ''}: nothing is being computed. "
                                "Resume continues the same curve.")
            self.eta.setText("paused")
        elif state == "running" and self.result_state == "paused":
            self.status.setText("Training...")
        if state in ("running", "pausing", "paused"):
            self.result_state = "paused" if state == "paused" else "running"

    # -- estimate
    def showEvent(self, event):
        super().showEvent(event)
        if self._estimate_pending:
            self._estimate_timer.start()

    def update_estimate(self):
        """Memory and duration of the run the options describe, worked out off the GUI thread while the page
        is shown (not while the user is busy on another step)."""
        # while a run trains, the estimate stays that of the run (new data or options are for the next run)
        self._estimate_pending = not self.isVisible() or self.slot.state != "idle"
        if self._estimate_pending:
            return
        s = self.session
        if s.model_dir is None or not s.usable_dataset:
            self.estimate.setText("")
            self.estimate_value = None
            return
        lengths = s.token_report.lengths if s.token_report is not None else None
        vals, self._fit_notes = self.fitted_values()
        if getattr(s.dataset, "pairs", 0):
            vals["method"] = self.method_key()
        self.slots["estimate"].start(estimate_training, s.model_dir, vals, self.n_train(), lengths,
                                     on_ok=self._show_estimate,
                                     on_failed=lambda exc: self.estimate.setText(
                                         "No estimate: " + html.escape(error_text(exc))))

    def _show_estimate(self, est: TrainEstimate):
        self.estimate_value = est
        pal = self.palette()
        mem = f"Needs about <b>{fmt_memory(est.memory_bytes)}</b> of memory"
        if est.available_bytes:
            mem += f" (this computer has {fmt_memory(est.available_bytes)})"
        # how the time was estimated is in the tooltip: inline, its longer wording wrapped the label to a third
        # line that the window's 700 px do not hold beside the fitted-data notes (tests/test_gui_layout)
        dur = f"<b>{est.steps:,} steps</b>, {about(est.seconds)}"
        self.estimate.setToolTip(f"The time is estimated {est.basis}." if est.seconds else "")
        text = f"{mem} · {dur}"
        if self._fit_notes:
            text += "<br>" + theme.span("Fitted to your data:", "warning", pal, bold=True) + " " + html.escape(
                "; ".join(self._fit_notes)) + "."
        if not est.fits:
            text = theme.span("This run will not fit in memory.", "error", pal, bold=True) + " " + html.escape(
                est.fix) + "<br>" + text
        elif est.available_bytes and est.memory_bytes > WARN_SHARE * est.available_bytes:
            text = theme.span("This run will use most of the memory;", "warning", pal, bold=True) + \
                " close other apps or lower the batch size.<br>" + text
        self.estimate.setText(text)
        self.refresh_controls()

    # -- several Macs -------------------------------------------------------------------------
    def _build_hosts_panel(self, lay):
        """The "Several Macs" section: a host file, a check of every Mac in it, and the switch that makes
        Start run the group (core.train.group) instead of the trainer on this Mac alone."""
        self._group_run = False  # the running job is a group run (no pause)
        self.hosts_box = Section("Several Macs" if ON_MAC else "Several computers")
        self.hosts_box.setObjectName("train.hosts_box")
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 0)
        intro = QLabel(_machines(
            "Train on this Mac and others at once: each Mac works on its share of every batch and "
            "this Mac writes the run. The host file lists one Mac per line, this one first "
            "(<code>HOST</code> or <code>HOST IP</code>). Every Mac needs the same Tuneloom, ssh "
            "without a password, and the model and data at the same paths."))
        intro.setWordWrap(True)
        v.addWidget(intro)
        row = QHBoxLayout()
        self.hosts_edit = QLineEdit()
        self.hosts_edit.setObjectName("train.hosts")
        self.hosts_edit.setPlaceholderText(_machines("host file, one Mac per line, this Mac first"))
        self.hosts_edit.setToolTip("A text file with one Mac per line (HOST or HOST IP; # starts a comment), "
                                   "or mlx.launch's JSON host file. The first one is this Mac.")
        choose = QPushButton("Choose...")
        choose.setObjectName("train.hosts_choose")
        choose.setToolTip("Pick the host file.")
        self.check_hosts_btn = QPushButton("Check Macs")
        self.check_hosts_btn.setObjectName("train.check_hosts")
        self.check_hosts_btn.setToolTip("Reach every Mac over ssh and compare its Tuneloom and MLX with this Mac's, "
                                        "and look for the model and the data at the same paths.")
        row.addWidget(self.hosts_edit, 1)
        row.addWidget(choose)
        row.addWidget(self.check_hosts_btn)
        v.addLayout(row)
        self.hosts_list = QListWidget()
        self.hosts_list.setObjectName("train.hosts_list")
        self.hosts_list.setMaximumHeight(110)
        v.addWidget(self.hosts_list)
        self.copy_btn = QPushButton("Copy what is missing")
        self.copy_btn.setObjectName("train.copy_missing")
        self.copy_btn.setToolTip("Copy the model and data files the other Macs lack, to the same paths there "
                                 "(rsync over ssh), then check again.")
        self.copy_btn.hide()  # offered when a check finds Macs that only lack files
        self._checks: list = []  # the last check's HostChecks
        v.addWidget(self.copy_btn)
        self.use_hosts = QCheckBox("Train on these Macs")
        self.use_hosts.setObjectName("train.use_hosts")
        v.addWidget(self.use_hosts)
        self.hosts_box.addWidget(box)
        self.hosts_box.collapse(animate=False)
        lay.addWidget(self.hosts_box)
        choose.clicked.connect(self._choose_hostfile)
        self.check_hosts_btn.clicked.connect(self.check_hosts)
        self.copy_btn.clicked.connect(self.copy_missing)
        self.hosts_edit.returnPressed.connect(self.check_hosts)
        self.hosts_edit.textChanged.connect(self._hostfile_changed)
        self._hostfile_changed()

    def _hosts_not_ready(self, why: str) -> None:
        """The group cannot be used (yet): say why on the switch, and leave it off."""
        self.use_hosts.setChecked(False)
        self.use_hosts.setEnabled(False)
        self.use_hosts.setToolTip(why)

    def _hostfile_changed(self, *_):
        self.hosts_list.clear()
        self.copy_btn.hide()
        has_file = bool(self.hosts_edit.text().strip())
        self.check_hosts_btn.setEnabled(has_file and not self.slots["train.hosts"].running)
        self._hosts_not_ready("Check the Macs first (Check Macs): every one must be ready." if has_file else
                              "Give a host file, then check the Macs.")

    def _choose_hostfile(self):
        start = self.hosts_edit.text().strip() or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Choose a host file", start,
                                              "Host files (*.txt *.json);;All files (*)")
        if path:
            self.hosts_edit.setText(path)
            self.check_hosts()

    def hostfile(self) -> Path:
        return Path(self.hosts_edit.text().strip()).expanduser()

    def check_hosts(self):
        """Check every Mac of the host file off the GUI thread (ssh waits on the network)."""
        if not self.hosts_edit.text().strip():
            return
        self._start_hosts_job("Checking the Macs...", gj.check_hosts, self.hostfile(), self._host_paths())

    def _host_paths(self) -> list[str]:
        s = self.session
        return [str(p) for p in (s.model_dir, *s.data_paths) if p is not None]

    def copy_missing(self):
        """Copy the files the last check found missing to those Macs, then check them all again."""
        bad = [c for c in self._checks if not c.ok]
        if not bad:
            return
        self._start_hosts_job(f"Copying to {', '.join(c.host.ssh for c in bad)}...", gj.copy_missing_and_check,
                              self.hostfile(), self._host_paths(), bad)

    def _start_hosts_job(self, what: str, fn, *args):
        self.hosts_list.clear()
        self.hosts_list.addItem(what)
        self._hosts_not_ready(what)
        self.copy_btn.hide()
        self.check_hosts_btn.setEnabled(False)
        self.slots["train.hosts"].start(fn, *args, on_ok=self._hosts_checked,
                                        on_failed=self._hosts_failed,
                                        on_ended=lambda: self.check_hosts_btn.setEnabled(
                                            bool(self.hosts_edit.text().strip())))

    def _hosts_checked(self, checks):
        self._checks = list(checks)
        self.hosts_list.clear()
        for c in checks:
            item = QListWidgetItem(c.line())
            item.setData(Qt.ItemDataRole.UserRole, c.ok)
            if not c.ok:
                item.setForeground(theme.accent("error", self.palette()))
                item.setToolTip(c.hint or c.problem)
            self.hosts_list.addItem(item)
        bad = [c for c in checks if not c.ok]
        if bad:
            self._hosts_not_ready(f"{len(bad)} of {len(checks)} Macs are not ready: {bad[0].line()}")
            # Macs that are reachable, run the same versions and only lack files: offer to copy them
            self.copy_btn.setVisible(all(c.missing and c.versions and not c.host.local for c in bad))
            return
        self.use_hosts.setEnabled(True)
        self.use_hosts.setToolTip(f"Start trains on these {len(checks)} Macs instead of this one alone. Stop "
                                  "and Resume work as usual; Pause does not.")

    def _hosts_failed(self, exc):
        self.hosts_list.clear()
        item = QListWidgetItem(error_text(exc))
        item.setForeground(theme.accent("error", self.palette()))
        self.hosts_list.addItem(item)
        self._hosts_not_ready(error_text(exc))

    def _run_group(self, cfg: TrainConfig, resume: Path | None):
        """Start (or resume) the run on the Macs of the host file; core.train.group reports like the trainer,
        so the curve, the figures and the log fill as in a run on this Mac."""
        from core.train.group import group_train

        self._group_run = True
        self._log_line("info", f"on the Macs of {self.hostfile()}")
        self.slot.start(group_train, cfg, self.hostfile(), resume=resume, on_step=self._step, on_metric=self._metric,
                        on_log=self._log_line, on_ok=self._done, on_failed=self._failed,
                        on_ended=self._group_ended)
        self.refresh_controls()

    def _group_ended(self):
        self._group_run = False
        self._ended()

    # -- running ------------------------------------------------------------------------------
    def start(self):
        why = self.blocker()
        if why or self.slot.state != "idle":
            self.status.setText(html.escape(why or "A run is in progress."))
            return
        s = self.session
        vals, notes = self.fitted_values()
        data_page = self.ctx.pages.get("data")
        valid_fraction = data_page.valid_fraction() if data_page is not None else 0.1
        known = {f.name for f in fields(TrainConfig)}
        data_options = {k: v for k, v in (s.data_options or {}).items() if k in known}
        if getattr(s.dataset, "pairs", 0):  # preference pairs: the method chosen above
            vals["method"] = self.method_key()
            if vals["method"] == "sft":
                data_options["use"] = "chosen"
        cfg = TrainConfig(model=str(s.model_dir), data=[str(p) for p in s.data_paths],
                          out=str(runs.new_run_dir(vals.get("name") or "run")), valid_fraction=valid_fraction,
                          skip_invalid=self.skip_invalid.isChecked(), **{**vals, **data_options})
        self.plot.clear_data()
        self._show_config(asdict(cfg))  # as fitted to the data: what this run really uses
        self._run(cfg, None, Path(cfg.out))
        for note in notes:
            self._log_line("info", note)

    def resume_run(self, run_dir: Path):
        """Continue a stopped or interrupted run from its latest checkpoint; its curve so far comes from disk."""
        if self.slot.state != "idle":
            self.status.setText("A run is in progress: stop it before resuming another.")
            return
        run_dir = Path(run_dir)
        self.ctx.go_to(TRAIN)
        writer = other_writer(run_dir, self.session)
        if writer is not None:
            self.status.setText(f"Not resumed: {html.escape(writer_words(writer))}.")
            return
        self.status.setText(f"Reading {html.escape(run_dir.name)}...")
        self.slots["train.load"].start(gj.load_run, run_dir, on_ok=lambda info: self._resume_loaded(run_dir, info),
                                       on_failed=lambda exc: self.status.setText(
                                           "Cannot resume: " + html.escape(error_text(exc))))

    def _resume_loaded(self, run_dir: Path, info):
        if info is None:
            self.status.setText(f"{html.escape(str(run_dir))} is not a run folder any more.")
            return
        self.plot.load_metrics(info.metrics or [])
        self._show_config(info.config)  # the run's own settings, not the form's
        self._run(TrainConfig(model=""), run_dir, run_dir, total=info.total_steps)
        ck = checkpoint_step(info) or 0
        vs, vv = runs.series([m for m in info.metrics or [] if int(m.get("step", 0)) <= ck], "valid_loss")
        if vv:  # the last validation loss before the checkpoint, not "-" until the next one
            self.stat["valid"].setText(f"{vv[-1]:.4f} @{vs[-1]}")

    def _run(self, cfg: TrainConfig, resume: Path | None, run_dir: Path, total: int | None = None):
        from core.isolated import in_process
        from core.train import train

        self._live_run = run_dir  # shown live from here on, not read back from disk
        self.session.update(run_dir=run_dir)
        self.show_memorising(None)  # until this run's trainer says so
        self.last_report = None
        self.result_problems = []
        self.log.clear()
        self._log_line("info", f"{'resuming' if resume else 'starting'} run {run_dir.name} ({run_dir})")
        self.progress.show()
        self.progress.setRange(0, 0)
        self.progress.setFormat("starting...")
        self.status.setText("Resuming..." if resume else "Starting: reading the data and loading the model...")
        self.result_state = "running"
        self._paint_result("running")
        self.result_box.show()
        for k in self.stat:
            self.stat[k].setText("-")
        if self.use_hosts.isChecked():  # several Macs: the ranks are processes of their own already
            self._run_group(cfg, resume)
            return
        # the trainer runs in a process of its own (core.isolated): its Python work never holds this window's
        # interpreter lock, and a crash there ends the run, not the app
        self.slot.start(in_process(train, "Training"), cfg, resume=resume, on_step=self._step, on_metric=self._metric, on_log=self._log_line,
                        on_ok=self._done, on_failed=self._failed, on_ended=self._ended)
        self.refresh_controls()

    def toggle_pause(self):
        self.slot.toggle_pause()

    def pause(self):
        self.slot.pause()

    def resume(self):
        self.slot.resume()

    def stop(self):
        if self.slot.running:
            self.status.setText("Stopping after this step and saving a checkpoint...")
            self.slot.stop()

    # -- reports
    def _step(self, r):
        if self.last_report is None:
            if self.slot.job is not None:
                self.slot.job.end_quiet_gc()
            self.session.touch_run()  # the run is under way: the history shows it as training
        self.plot.set_total(r.total)
        self.plot.add_step(r.step, r.train_loss, r.learning_rate)
        self.last_report = r
        self._stats_dirty = True

    def method_key(self) -> str:
        return self.method.currentData() or "sft"

    def _method_preset(self, key: str) -> None:
        """The preset's values for the method now chosen (core.presets.METHOD_PRESETS: a lower learning rate,
        beta, lambda), in the options the user left as the previous method's preset set them."""
        if not hasattr(self, "options"):
            return
        for name, only in METHOD_OPTIONS.items():
            w = self.options.widgets.get(name)
            if w is not None:
                w.setEnabled(key == only)
        old = getattr(self, "_preset_method", None)
        if old is None or old == key:
            return
        before, now = preset_config(self.preset_key(), old), preset_config(self.preset_key(), key)
        cur = self.values()
        keep = {k: v for k, v in now.items() if k in cur and before.get(k) != v and cur[k] == before.get(k)}
        self._preset_method = key
        if keep:
            self._applying = True
            try:
                self.options.set_values(keep)
            finally:
                self._applying = False
        self._options_changed()

    def _method_changed(self):
        from core.train.preference import METHOD_TEXT

        key = self.method_key()
        text = ("Learn the chosen answers as examples; the rejected answers are left out."
                if key == "sft" else METHOD_TEXT[key][1] + " Each pair is two sequences: a step takes about "
                "twice the memory and time of a supervised one.")
        self.method_line.setText(html.escape(text))
        self._method_preset(key)
        if hasattr(self, "estimate"):
            self.update_estimate()
        if hasattr(self, "right_series"):  # the reward figures mean something for a preference run
            self.right_series.setCurrentIndex(max(0, self.right_series.findData(
                "reward_margin" if key != "sft" else "learning_rate")))

    def _metric(self, name, step, value):
        if name in ("reward_margin", "reward_accuracy"):
            self.plot.add(name, step, value)
            return
        if name == "valid_loss":
            self.plot.add_valid(step, value)
            self.stat["valid"].setText(f"{value:.4f} @{step}")
            self.stat["valid"].setToolTip(f"validation loss at step {step}")

    def _show_stats(self):
        if not self._stats_dirty or self.last_report is None:
            return
        self._stats_dirty = False
        r = self.last_report
        self.stat["step"].setText(f"{r.step:,} / {r.total:,}")
        self.stat["epoch"].setText(f"{r.epoch:.2f}")
        self.stat["loss"].setText(f"{r.train_loss:.4f}")
        self.stat["speed"].setText(f"{r.tokens_per_sec:,.0f}")
        self.stat["elapsed"].setText(fmt_duration(r.elapsed))
        self.stat["memory"].setText(fmt_memory(r.peak_memory))
        if self.slot.state == "running":
            self.eta.setText(f"{fmt_duration(r.eta_seconds)} left" if r.step < r.total else "finishing...")
            if self.status.text() != "Training...":
                self.status.setText("Training...")
        if self.progress.maximum() != r.total:
            self.progress.setRange(0, max(1, r.total))
        if 1000 * r.step // max(1, r.total) != 1000 * self.progress.value() // max(1, r.total) or r.step == r.total:
            self.progress.setValue(r.step)  # repainting the bar costs: only when it moves a pixel or so
            self.progress.setFormat(f"step {r.step:,} of {r.total:,}")
            if self._live_run is not None:  # the run bar above says the step reached, not the last checkpoint's
                LIVE_STEPS[str(self._live_run)] = (r.step, r.total)
                self.run_bar.refresh()

    def _show_memorising_of(self, m) -> None:
        """The banner for a run's recorded memorising ({"best_step", "step", ...} in its result or status)."""
        from core.train import memorising_text

        try:
            self.show_memorising(memorising_text(m) if isinstance(m, dict) else None)
        except (KeyError, TypeError, ValueError):  # a damaged record: no banner rather than a crash
            self.show_memorising(None)

    def show_memorising(self, text: str | None) -> None:
        """The memorising banner with ``text`` (core.train.memorising_text), or hidden (None)."""
        if not text:
            self.memo_banner.hide()
            self.memo_text.setText("")
            return
        head = theme.span("Memorising:", "warning", self.palette(), bold=True)
        self.memo_text.setText(f"{head} {html.escape(text)} More passes will not help; fewer passes, more "
                               "examples, or early stop will.")
        self._paint_memo()
        self.memo_banner.show()

    def _paint_memo(self):
        self.memo_banner.fill_color = theme.tint("warning", self.palette(), 0.16)
        self.memo_banner.update()

    def _log_line(self, level: str, text: str):
        if level == "warning" and "started to memorise" in text:  # the trainer's warning (core.train.memorising_text)
            self.show_memorising(text)
        pal = self.palette()
        esc = html.escape(text)
        if level in ("warning", "error"):
            line = theme.span(f"{level}: {esc}", "error" if level == "error" else "warning", pal, bold=True)
        else:
            line = f"<span style='color:{pal.color(pal.ColorRole.Text).name()}'>{esc}</span>"
        self.log.appendHtml(line)

    # -- endings
    def _done(self, res: dict):
        self._show_stats()
        r = self.last_report
        run_dir = Path(res.get("run_dir") or self.session.run_dir)
        folder = runs.RunFolder(run_dir)
        self._finished(run_dir, folder.metrics, int(res["steps"]), folder.config, valid=res.get("valid_loss"))
        # issue 28: the best step (its adapter is the one Try and Export use), early stop, memorising
        best = res.get("best_step")
        extra = ""
        if best is not None and best != res.get("steps"):
            extra += (f"<br><b>Best step: {best}</b> (validation loss {res.get('best_valid_loss') or 0:.3f}): Try and "
                      "Export use its adapter.")
        if res.get("stopped_early"):
            extra += f" Stopped early at step {res['stopped_early']}: the validation loss no longer improved."
        if res.get("memorising"):
            extra += (f" The model started to memorise after step {res['memorising']['best_step']} (the validation "
                      "loss rose while the training loss fell).")
            self._show_memorising_of(res["memorising"])
        if extra:
            self.status.setText(self.status.text() + extra)
        self._log_line("info", f"done in {fmt_duration(r.elapsed if r else res.get('seconds'))}")
        notify(self.ctx.window, "Training finished",
               f"{res['steps']} steps" + (f", validation loss {res['valid_loss']:.3f}" if res.get("valid_loss")
                                          is not None else ""))

    def _finished(self, run_dir: Path, metrics: list, steps: int, cfg: dict, valid=None, name: str = ""):
        """The banner of a finished run: its loss at the start and the end, like with like (core.runs.loss_summary),
        in green; in amber when it probably learned little (too short, the loss did not fall)."""
        summary = runs.loss_summary(metrics)
        problems = runs.learning_problems(summary, steps, int(cfg.get("warmup") or 0), MIN_STEPS)
        self.loss_summary = summary
        parts = [f"{steps:,} steps"]
        if summary is not None:
            parts.append(summary.words())
            if summary.kind == "validation":  # the training loss as a second opinion, like with like too
                train_only = runs.loss_summary([m for m in metrics if "valid_loss" not in m])
                if train_only is not None:
                    parts.append(train_only.words())
        elif valid is not None:
            parts.append(f"validation loss {valid:.3f}")
        who = f"{html.escape(name)}: " if name else ""
        where = f"The adapter is in <code>{html.escape(str(run_dir))}</code>."
        if problems:
            head = theme.span("Done, but it probably learned little:", "warning", self.palette(), bold=True)
            text = (f"{who}{head} {html.escape('; '.join(problems))}.<br>" + html.escape(", ".join(parts)) +
                    f".<br>{where} Train longer (a preset with more passes, more examples) or with a higher "
                    "learning rate, then compare the runs in the history.")
        else:
            text = f"{who}<b>Done:</b> " + html.escape(", ".join(parts)) + \
                f".<br>{where} Next: <b>Try it</b> to compare with the original, then Export."
        self.result_problems = problems
        self.eta.setText("done")
        self.result_state = "done"
        self.status.setText(text)
        self._paint_result("done")

    def _failed(self, exc):
        if isinstance(exc, Cancelled):
            res = exc.result or {}
            steps, total = res.get("steps"), res.get("total_steps")
            self.result_state = "stopped"
            self.eta.setText("stopped")
            self.status.setText(f"<b>Stopped</b> at step {steps} of {total}. A checkpoint is kept: Resume continues "
                                "from there (also after quitting), or Try the adapter as it is now.")
            self._paint_result("stopped")
            self._log_line("info", str(exc))
            if not self._close_when_done:
                notify(self.ctx.window, "Training stopped", f"step {steps} of {total}; resumable")
            return
        self.result_state = "failed"
        self.eta.setText("failed")
        run_dir = self.session.run_dir
        info = runs.RunInfo.load(run_dir) if run_dir is not None else None
        if info is not None and info.state in ("new", "unknown"):
            runs.set_status(run_dir, "failed", error=error_text(exc), step=0)  # it failed before it began
        msg = html.escape(error_text(exc)).replace("\n", "<br>")
        self.status.setText(theme.span("Training failed:", "error", self.palette(), bold=True) + " " + msg)
        self._paint_result("failed")
        self._log_line("error", error_text(exc))
        notify(self.ctx.window, "Training failed", str(exc), error=True)

    def _ended(self):
        if self._live_run is not None:
            LIVE_STEPS.pop(str(self._live_run), None)  # from here on the files say it
        self._live_run = None
        self._restore_user_options()
        self._estimate_timer.start()
        self.session.touch_run()
        self.refresh_controls()
        if self.result_state in ("running", "paused"):
            self.result_state = "idle"
        if self.progress.maximum() == 0:  # ended before its first step: an empty bar looks like a text field
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("")
            self.progress.hide()
        if self._close_when_done:
            QTimer.singleShot(0, self.ctx.window.close)

    def _show_result(self, kind):
        self._paint_result(kind)

    def changeEvent(self, event):
        from PySide6.QtCore import QEvent

        # the result box's colour was mixed from the palette: mix it again for the new appearance
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange) and \
                hasattr(self, "result_box"):
            self._paint_result(self.result_state)
            if hasattr(self, "memo_banner"):
                self._paint_memo()
        super().changeEvent(event)

    def _paint_result(self, kind):
        """The result box takes the colour of how the run ended."""
        roles = {"done": "warning" if self.result_problems else "ok", "failed": "error", "stopped": "warning"}
        box = self.result_box
        box.fill_color = theme.tint(roles[kind], self.palette(), 0.16) if kind in roles else None
        box.update()

    # -- closing the window
    def close_request(self) -> bool:
        if not self.slot.running:
            return True
        if self._close_when_done:
            return False  # already stopping; the window closes when the checkpoint is written
        answer = QMessageBox.question(
            self.ctx.window, "Training is running",
            "Stop training and quit?\n\nA checkpoint is saved first; after you open Tuneloom again the run is in "
            "the history and Resume continues the same curve.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Yes)
        if answer in (QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.No,
                      QMessageBox.StandardButton.Abort, QMessageBox.StandardButton.Escape):
            return False
        self._close_when_done = True
        self.stop()
        return False
