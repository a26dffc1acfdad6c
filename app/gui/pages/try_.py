"""Step 4, Try: chat with the original and the fine-tuned model side by side, and evaluate both.

The models are loaded once (a :class:`core.generate.ChatSession` on a worker thread) and stay
loaded between questions. Tokens are generated on the worker; it puts the text pieces in a
:class:`ChunkBuffer` and a GUI-thread timer moves what has arrived into the two views every
``FLUSH_MS`` (so the window repaints at most that often, however fast the model is).
"""
from __future__ import annotations

import html
import threading
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QFontDatabase, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGridLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPlainTextEdit, QProgressBar, QPushButton, QSpinBox, QTabWidget, QVBoxLayout,
                               QWidget)

from app.gui import theme
from app.gui.eval_table import EvalTable
from app.gui.pages.base import AppContext, Page, error_text
from app.gui.run_bar import RunBar
from app.gui.widgets import fill_adapter_choices
from core.events import Cancelled

FLUSH_MS = 40  # how often streamed text reaches the views
SIDE_TITLES = {"base": "Original model", "tuned": "Your fine-tuned model"}


def demo_question() -> str:
    try:
        from core.demo import first_heldout_prompt
    except ImportError:
        first_heldout_prompt = None
    try:
        if first_heldout_prompt is not None:
            return first_heldout_prompt()
        import json

        from core.paths import demo_data_dir

        return json.loads((demo_data_dir().parent / "heldout.json").read_text())["structured"][0]["messages"][-1][
            "content"]
    except (OSError, ValueError, KeyError, IndexError):
        return ""


class ChunkBuffer:
    """Text pieces from the worker, taken by the GUI thread in one go."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: list = []

    def push(self, chunk) -> None:
        with self._lock:
            self._items.append(chunk)

    def drain(self) -> list:
        with self._lock:
            items, self._items = self._items, []
        return items


class ModelHolder:
    """The loaded chat (one per model + run); loaded on the worker that first needs it."""

    def __init__(self):
        self.key = None
        self.chat = None
        self.lock = threading.Lock()
        self.adapter = "best"  # which of the run's adapters: "best" (lowest validation loss) or "final"

    def get(self, model_dir, run_dir, events=None, cancel=None):
        from core.generate import ChatModel, ChatSession

        key = (str(model_dir), str(run_dir) if run_dir else None, self.adapter)
        with self.lock:
            if self.key != key or self.chat is None:
                self.chat, self.key = None, None
                if run_dir is not None:
                    chat = ChatSession.for_run(run_dir, events=events, cancel=cancel, adapter=key[2])
                else:
                    if events is not None:
                        events.progress(0, None, f"loading {Path(model_dir).name}")
                    chat = ChatSession(ChatModel(model_dir), ("base",))
                self.chat, self.key = chat, key
            return self.chat


def chat_turn(holder: ModelHolder, model_dir, run_dir, text, sampling, system, buffer: ChunkBuffer,
              events=None, cancel=None, tools=None):
    """Load (once) and answer ``text`` on every side, pushing the chunks into ``buffer``
    (``tools``: the functions the models may call, from this question on)."""
    chat = holder.get(model_dir, run_dir, events, cancel)
    chat.system = system or None
    chat.tools = tools
    chat.ask(text, on_chunk=buffer.push, cancel=cancel, sampling=sampling)
    return chat.turns[-1]


def tool_result_turn(holder: ModelHolder, model_dir, run_dir, side, results, sampling, buffer: ChunkBuffer,
                     events=None, cancel=None):
    """Give ``side`` what its calls returned (one text per call) and let it answer again."""
    chat = holder.get(model_dir, run_dir, events, cancel)
    return chat.tool_result(side, list(results), on_chunk=buffer.push, cancel=cancel, sampling=sampling)


# -- tools (issue 31) ----------------------------------------------------------------------------
from core.tools import call_text, read_tools_text  # noqa: E402,F401  (shared with `tuneloom chat --tools`)


def evaluate_job(holder: ModelHolder, model_dir, run_dir, data, limit, on_row, drift=False, events=None,
                 cancel=None):
    """core.evaluate.evaluate on the loaded model (greedy: the numbers of ``tuneloom eval``); with ``drift``
    the forgetting check too (``result.drift``). Both are kept with the run (its report card)."""
    from core.evaluate import evaluate

    chat = holder.get(model_dir, run_dir, events, cancel)
    result = evaluate(run_dir, data or None, limit=limit, model=chat.model, events=events, cancel=cancel,
                      on_row=on_row)
    result.drift = None
    if drift:
        from core.drift import drift_check

        result.drift = drift_check(run_dir, model=chat.model, events=events, cancel=cancel)
    try:
        from core.report import record_evaluation

        record_evaluation(run_dir, result, result.drift)
    except OSError as exc:
        if events is not None:
            events.log("warning", f"could not update the run's report card: {exc}")
    return result


def eval_summary_text(result) -> str:
    """Which examples the evaluation used, and the forgetting check's verdict, in words (the Evaluate tab)."""
    where = {"test": "the run's test examples, never seen in training",
             "validation": "the run's validation examples (the run has no test split)",
             "files": "the files given"}.get(result.source, result.source)
    text = f"Evaluated on {where}: {len(result.rows)} examples, fine-tune with {result.adapter or 'its adapter'}."
    pref = getattr(result, "preference", None) or {}
    if any(pref.get(side) is not None for side in ("base", "tuned")):  # a preference run (issue 30)
        def pct(v):
            return f"{100 * v:.1f}%" if v is not None else "n/a"

        text += (f"\nPreference accuracy (held-out pairs whose chosen answer the model rates above the rejected one): "
                 f"original {pct(pref.get('base'))}, fine-tune {pct(pref.get('tuned'))}.")
    calls = {side: result.scores(side).tool_call_accuracy for side in ("base", "tuned")}
    if any(v is not None for v in calls.values()):  # the examples call functions (issue 31)
        shown = {k: "n/a" if v is None else f"{v:.0%}" for k, v in calls.items()}
        text += (f"\nTool-call accuracy (right function, arguments equal as JSON, every call of the turn): "
                 f"original model {shown['base']}, fine-tune {shown['tuned']}.")
    d = getattr(result, "drift", None)
    if d:
        text += (f"\nForgetting check on {d['probe_count']} general prompts: {d['verdict']} (KL "
                 f"{d['kl_per_token']:.3f} nats per token, {d['changed_share']:.0%} answered differently).")
        for p in d.get("probes", [])[:3]:
            text += f"\n  moved most: {p['prompt']!r}: {p['base'][:50]!r} -> {p['tuned'][:50]!r}"
    return text


def system_prompt_job(run_dir, events=None, cancel=None):
    from core.generate import trained_system_prompt

    return trained_system_prompt(run_dir)


class _Rows(QObject):
    row = Signal(object)  # emitted on the worker, delivered on the GUI thread


class AnswerView(QPlainTextEdit):
    """One side's transcript; streamed text is appended at the end."""

    def __init__(self, name: str):
        super().__init__()
        self.setObjectName(name)
        self.setReadOnly(True)
        self.setAcceptDrops(False)
        self.updates = 0  # appends so far (tests count them)
        self.answer_start = 0  # where the answer being streamed begins (its calls replace their text)

    def _end(self) -> QTextCursor:
        cur = self.textCursor()
        cur.movePosition(QTextCursor.MoveOperation.End)
        return cur

    def append_text(self, text: str, fmt: QTextCharFormat | None = None):
        cur = self._end()
        cur.insertText(text, fmt if fmt is not None else QTextCharFormat())
        self.updates += 1
        sb = self.verticalScrollBar()
        sb.setValue(sb.maximum())

    def mark_answer(self) -> None:
        """The next text streamed in is a new answer."""
        self.answer_start = self._end().position()

    def _tool_format(self) -> QTextCharFormat:
        fmt = QTextCharFormat()
        fmt.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        fmt.setForeground(theme.accent("tool", self.palette()))
        fmt.setBackground(theme.tint("tool", self.palette()))
        return fmt

    def show_calls(self, calls: list[dict]) -> None:
        """The answer streamed since :meth:`mark_answer` calls functions: its call blocks give way to
        the calls written as calls (``describe(name="Olla")``), set apart from the prose."""
        import re

        cur = self._end()
        cur.setPosition(min(self.answer_start, cur.position()), QTextCursor.MoveMode.KeepAnchor)
        raw = cur.selectedText().replace("\u2029", "\n")
        prose = re.sub(r"<tool_call>.*?(?:</tool_call>|\Z)", "", raw, flags=re.S).strip() \
            if "<tool_call>" in raw else ""
        cur.removeSelectedText()
        if prose:
            cur.insertText(prose + "\n", QTextCharFormat())
        fmt = self._tool_format()
        for i, c in enumerate(calls):
            cur.insertText(("\n" if i else "") + "\u2192 call " + call_text(c), fmt)
        self.updates += 1

    def show_result(self, call: dict, result: str) -> None:
        """What the user typed as a call's result, set apart like the call."""
        self.append_text(f"\n\u2190 {call.get('name')} returned: {result}", self._tool_format())
        self.append_text("\n")


class TryPage(Page):
    key = "try"
    title = "4. Try it"
    blurb = ("Chat with the original model and your fine-tune side by side (the same conversation for both), "
             "or evaluate both on the examples kept aside for the test.")

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        self.run_bar = RunBar(ctx, "try", "Try asks the fine-tuned model of this run")  # the current run, named
        self.layout_.addWidget(self.run_bar)
        self.holder = ModelHolder()
        self.buffer = ChunkBuffer()
        self._rows = _Rows()
        self._eval_warnings: list[str] = []  # what the last evaluation left out (a bad line), in words
        self._rows.row.connect(self._eval_row)
        self._reset_after_stop = False
        self._sides: tuple = ()
        self._prefilled_for = None
        self.flush_timer = QTimer(self)
        self.flush_timer.setInterval(FLUSH_MS)
        self.flush_timer.timeout.connect(self._flush)

        self._build_chat_widgets()
        self._build_sampling()
        chat_tab = self._build_chat_tab()
        eval_tab = self._build_eval_tab()

        self.tabs = QTabWidget()
        self.tabs.setObjectName("try.tabs")
        self.tabs.addTab(chat_tab, "Chat")
        self.tabs.addTab(eval_tab, "Evaluate")
        self.layout_.addWidget(self.tabs, 1)

        self.ask_btn.clicked.connect(self.ask)
        self.stop_btn.clicked.connect(self.stop)
        self.new_btn.clicked.connect(self.new_chat)
        self.prompt.returnPressed.connect(self.ask)
        self.eval_btn.clicked.connect(self.evaluate)
        self.eval_stop.clicked.connect(lambda: self.slots["eval"].stop())
        self.refresh()

    def _build_chat_widgets(self) -> None:
        """The chat's widgets: the prompt and its buttons, both answers, the questions asked, the status line."""
        # the chat
        self.prompt = QLineEdit("")
        self.prompt.setObjectName("try.prompt")
        self.prompt.setPlaceholderText("Ask both models something...")
        self.ask_btn = QPushButton("Send")
        self.ask_btn.setObjectName("try.send")
        self.ask_btn.setDefault(True)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setObjectName("try.stop")
        self.stop_btn.setEnabled(False)
        self.new_btn = QPushButton("New chat")
        self.new_btn.setObjectName("try.new")
        self.new_btn.setToolTip("Start a new conversation (the models stay loaded).")
        self.base_out = AnswerView("try.base")
        self.tuned_out = AnswerView("try.tuned")
        self._questions: list[str] = []
        self.questions = QLabel("")
        self.questions.setObjectName("try.questions")
        self.questions.setWordWrap(True)
        self.questions.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status = QLabel("")
        self.status.setObjectName("try.status")
        self.status.setWordWrap(True)

    def _build_sampling(self) -> None:
        """The sampling settings (defaults and tooltips from core.generate.Sampling) and the system prompt."""
        # settings
        from core.generate import Sampling

        d = Sampling()
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setValue(d.temperature)
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.05, 1.0)
        self.top_p.setSingleStep(0.05)
        self.top_p.setValue(d.top_p)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 8192)
        self.max_tokens.setValue(d.max_tokens)
        self.seed = QLineEdit("" if d.seed is None else str(d.seed))
        self.seed.setPlaceholderText("random")
        self.system = QPlainTextEdit()
        self.system.setObjectName("try.system")
        self.system.setPlaceholderText("No system prompt")
        self.system.setMaximumHeight(60)
        help_ = {f.name: f.metadata.get("help", "") for f in Sampling.__dataclass_fields__.values()}
        for w, k in ((self.temperature, "temperature"), (self.top_p, "top_p"), (self.max_tokens, "max_tokens"),
                     (self.seed, "seed")):
            w.setToolTip(help_.get(k, "").capitalize())
        self.system.setToolTip("The system prompt the run was trained with; changing it applies from the next question.")

    def _build_chat_tab(self) -> QWidget:
        """The Chat tab: the settings, the system prompt, the tools, both answers side by side, the prompt row."""
        row = QHBoxLayout()
        row.addWidget(self.prompt, 1)
        row.addWidget(self.ask_btn)
        row.addWidget(self.stop_btn)
        row.addWidget(self.new_btn)
        settings = QHBoxLayout()
        for label, w in (("Temperature", self.temperature), ("Top-p", self.top_p), ("Max tokens", self.max_tokens),
                         ("Seed", self.seed)):
            settings.addWidget(QLabel(label))
            settings.addWidget(w)
        settings.addStretch(1)
        sysform = QFormLayout()
        sysform.addRow("System prompt", self.system)
        self._build_tools()
        cols = QGridLayout()
        self.base_title = QLabel(f"<b>{SIDE_TITLES['base']}</b>")
        self.tuned_title = QLabel(f"<b>{SIDE_TITLES['tuned']}</b>")
        cols.addWidget(self.base_title, 0, 0)
        cols.addWidget(self.tuned_title, 0, 1)
        cols.addWidget(self.base_out, 1, 0)
        cols.addWidget(self.tuned_out, 1, 1)
        for i, side in enumerate(("base", "tuned")):
            cols.addWidget(self.result_rows[side], 2, i)
        chat_tab = QWidget()
        cl = QGridLayout(chat_tab)
        cl.setContentsMargins(0, 6, 0, 0)
        cl.addLayout(settings, 0, 0)
        cl.addLayout(sysform, 1, 0)
        cl.addWidget(self.tools_box, 2, 0)
        cl.addWidget(self.questions, 3, 0)
        cl.addLayout(cols, 4, 0)
        cl.setRowStretch(4, 1)
        cl.addLayout(row, 5, 0)
        cl.addWidget(self.status, 6, 0)
        return chat_tab

    def _build_eval_tab(self) -> QWidget:
        """The Evaluate tab: its row (file, limit, adapter, forgetting check), progress, summary and table."""
        # the evaluation
        self.eval_btn = QPushButton("Evaluate")
        self.eval_btn.setObjectName("try.evaluate")
        self.eval_btn.setToolTip("Answer every test example (never seen in training) with both models and score the answers.")
        self.eval_stop = QPushButton("Stop")
        self.eval_stop.setEnabled(False)
        self.eval_file = QLineEdit()
        self.eval_file.setObjectName("try.eval_file")
        self.eval_file.setPlaceholderText("the run's test examples (or type the path of a data file)")
        self.eval_limit = QSpinBox()
        self.eval_limit.setObjectName("try.eval_limit")
        self.eval_limit.setRange(0, 100000)
        self.eval_limit.setSpecialValueText("all examples")
        self.eval_limit.setPrefix("at most ")
        self.eval_limit.setToolTip("How many examples to evaluate (the first ones; all: every one).")
        self.eval_progress = QProgressBar()
        self.eval_progress.setVisible(False)
        self.table = EvalTable()
        # issue 28: which adapter (best / final), the forgetting check, and what the evaluation used
        self.eval_adapter = QComboBox()
        self.eval_adapter.setObjectName("try.adapter")
        # labelled with the run's steps (core.runs.adapter_choices), again when the run changes (session_changed)
        fill_adapter_choices(self.eval_adapter, self._target()[1])
        self.eval_adapter.setToolTip("The best adapter (lowest validation loss) or the one from the last step, "
                                     "for the chat and the evaluation.")
        self.eval_adapter.currentIndexChanged.connect(self._adapter_changed)
        self.eval_drift = QCheckBox("Forgetting check")
        self.eval_drift.setObjectName("try.eval_drift")
        self.eval_drift.setChecked(False)  # 72 more answers per model: on request
        self.eval_drift.setToolTip("Also ask both models general questions and measure how far the fine-tune "
                                   "moved from the original (kept / some drift / forgot).")
        self.eval_summary = QLabel("")
        self.eval_summary.setObjectName("try.eval_summary")
        self.eval_summary.setWordWrap(True)
        self.eval_summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        erow = QHBoxLayout()
        erow.addWidget(self.eval_btn)
        erow.addWidget(self.eval_stop)
        erow.addWidget(self.eval_file, 1)
        self.eval_browse = QPushButton("Browse...")
        self.eval_browse.setObjectName("try.eval_browse")
        self.eval_browse.setToolTip("Pick a data file to evaluate on (empty: the run's validation examples).")
        self.eval_browse.clicked.connect(self.browse_eval_file)
        erow.addWidget(self.eval_browse)
        erow.addWidget(self.eval_limit)
        erow.addWidget(self.eval_adapter)
        erow.addWidget(self.eval_drift)
        eval_tab = QWidget()
        el = QGridLayout(eval_tab)
        el.setContentsMargins(0, 6, 0, 0)
        el.addLayout(erow, 0, 0)
        el.addWidget(self.eval_progress, 1, 0)
        el.addWidget(self.eval_summary, 2, 0)
        el.addWidget(self.table, 3, 0)
        el.setRowStretch(3, 1)
        return eval_tab

    # -- tools (issue 31) ------------------------------------------------------------------------
    def _build_tools(self):
        """The Tools section (definitions pasted or loaded) and, under each column, the input for
        what a call returned."""
        from app.gui.widgets import Section

        self.tools: list[dict] | None = None  # the valid definitions, in OpenAI's form
        self.tools_error: str | None = None
        self.tools_box = Section("Tools")
        self.tools_box.setObjectName("try.tools")
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 0)
        intro = QLabel("Functions the models may call, as JSON: a list, or one function per line "
                       "(<code>{\"name\": ..., \"description\": ..., \"parameters\": {...}}</code> or OpenAI's "
                       "<code>{\"type\": \"function\", \"function\": {...}}</code>). "
                       "They apply from the next question.")
        intro.setWordWrap(True)
        v.addWidget(intro)
        self.tools_edit = QPlainTextEdit()
        self.tools_edit.setObjectName("try.tools_edit")
        self.tools_edit.setPlaceholderText('[{"name": "describe", "description": "Describe a thing", "parameters": '
                                           '{"type": "object", "properties": {"name": {"type": "string"}}}}]')
        self.tools_edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.tools_edit.setMaximumHeight(90)
        v.addWidget(self.tools_edit)
        trow = QHBoxLayout()
        self.tools_load = QPushButton("Load...")
        self.tools_load.setObjectName("try.tools_load")
        self.tools_load.setToolTip("Read the tool definitions from a JSON or JSONL file.")
        self.tools_clear = QPushButton("Clear")
        self.tools_clear.setObjectName("try.tools_clear")
        self.tools_message = QLabel("")
        self.tools_message.setObjectName("try.tools_message")
        self.tools_message.setWordWrap(True)
        self.tools_message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        trow.addWidget(self.tools_message, 1)
        trow.addWidget(self.tools_load)
        trow.addWidget(self.tools_clear)
        v.addLayout(trow)
        self.tools_box.addWidget(box)
        self.tools_box.collapse(animate=False)
        self.tools_edit.textChanged.connect(self._tools_changed)
        self.tools_load.clicked.connect(self.browse_tools)
        self.tools_clear.clicked.connect(self.tools_edit.clear)

        self.result_rows, self.result_inputs, self.result_sends, self.result_labels = {}, {}, {}, {}
        self._waiting: dict[str, list[dict]] = {}  # side -> the calls its last answer made, waiting for results
        self._results: dict[str, list[str]] = {}  # side -> the results typed so far
        for side in ("base", "tuned"):
            w = QWidget()
            w.setObjectName(f"try.{side}.tool_row")
            h = QHBoxLayout(w)
            h.setContentsMargins(0, 0, 0, 0)
            label = QLabel("")
            edit = QLineEdit()
            edit.setObjectName(f"try.{side}.tool_result")
            send = QPushButton("Send result")
            send.setObjectName(f"try.{side}.tool_send")
            send.setToolTip("Give the model what the function returned; it continues its answer.")
            h.addWidget(label)
            h.addWidget(edit, 1)
            h.addWidget(send)
            w.setVisible(False)
            edit.returnPressed.connect(lambda s=side: self.send_tool_result(s))
            send.clicked.connect(lambda _c=False, s=side: self.send_tool_result(s))
            self.result_rows[side], self.result_inputs[side], self.result_sends[side] = w, edit, send
            self.result_labels[side] = label

    def _tools_changed(self):
        self.tools, self.tools_error = read_tools_text(self.tools_edit.toPlainText())
        pal = self.palette()
        if self.tools_error:
            self.tools_message.setText(theme.span("Cannot use these tools:", "error", pal, bold=True) + " "
                                       + html.escape(self.tools_error))
            self.tools_box.setText("Tools (not usable: see the message)")
        elif self.tools:
            names = [t["function"]["name"] for t in self.tools]
            self.tools_message.setText(theme.span(f"{len(names)} function{'s' if len(names) != 1 else ''}:", "ok",
                                                  pal, bold=True) + " " + html.escape(", ".join(names))
                                       + ". The models see them from the next question.")
            self.tools_box.setText(f"Tools ({', '.join(names)})")
        else:
            self.tools_message.setText("No tools: the models answer in prose.")
            self.tools_box.setText("Tools")
        self.refresh()

    def load_tools_file(self, path) -> bool:
        """Put a file's tool definitions in the Tools section (checked as if pasted)."""
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            self.tools_message.setText(theme.span("Cannot read the file:", "error", self.palette(), bold=True) + " "
                                       + html.escape(f"{path}: {exc}"))
            return False
        self.tools_box.expand(animate=False)
        self.tools_edit.setPlainText(text)
        return self.tools_error is None

    def browse_tools(self):
        from PySide6.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "Load tool definitions", str(Path.home()),
                                              "JSON files (*.json *.jsonl);;All files (*)")
        if path:
            self.load_tools_file(path)

    def _show_waiting(self, side: str, calls: list[dict]):
        """``side``'s answer calls functions: show them as calls and ask for their results."""
        self.view(side).show_calls(calls)
        self._waiting[side], self._results[side] = list(calls), []
        self._ask_result(side)

    def _ask_result(self, side: str):
        calls, got = self._waiting.get(side) or [], self._results.get(side) or []
        if not calls or len(got) >= len(calls):
            self.result_rows[side].setVisible(False)
            return
        call = calls[len(got)]
        n = f" ({len(got) + 1} of {len(calls)})" if len(calls) > 1 else ""
        self.result_labels[side].setText(f"Result of <code>{html.escape(call['name'])}</code>{n}:")
        self.result_inputs[side].clear()
        self.result_inputs[side].setPlaceholderText(f"What {call['name']} returned (e.g. JSON), then Enter")
        self.result_rows[side].setVisible(True)

    def _clear_waiting(self):
        self._waiting, self._results = {}, {}
        for w in self.result_rows.values():
            w.setVisible(False)

    def send_tool_result(self, side: str):
        """The typed result of ``side``'s next waiting call; with the last one, that side continues."""
        model_dir, run = self._target()
        text = self.result_inputs[side].text().strip()
        calls = self._waiting.get(side) or []
        if not text or not calls or model_dir is None or self.slots.running("try") or self.slots.running("eval"):
            return
        got = self._results.setdefault(side, [])
        self.view(side).show_result(calls[len(got)], text)
        got.append(text)
        if len(got) < len(calls):
            self._ask_result(side)
            return
        results = list(got)
        self._waiting.pop(side, None)
        self._results.pop(side, None)
        self.result_rows[side].setVisible(False)
        self.view(side).mark_answer()
        self.buffer.drain()
        self.status.setText("Answering...")
        self.slots["try"].start(tool_result_turn, self.holder, model_dir, run, side, results, self.sampling(),
                                self.buffer, on_ok=self._answered, on_failed=self._failed, on_ended=self._ended,
                                quiet_gc=True)
        self.flush_timer.start()
        self.refresh()

    # -- session -------------------------------------------------------------------------------
    def session_changed(self, names: set):
        if names & {"model_dir", "run_dir", "run_version", "jobs"}:
            self.refresh()
        if names & {"run_dir", "run_version"}:  # a run trained or switched: its adapters' steps
            fill_adapter_choices(self.eval_adapter, self._target()[1])
        if names & {"model_dir", "run_dir"}:
            self._new_target()

    def _target(self):
        s = self.session
        run = s.run_dir if s.trained else None
        return s.model_dir, run

    def _new_target(self):
        """A different model or run: a new chat, its system prompt, the demo question."""
        model_dir, run = self._target()
        if self.slots.running("try"):
            self._reset_after_stop = True
            self.slots["try"].stop()
        else:
            self._clear_chat()
        self.table.clear()
        self.table.run_dir = run
        from core.paths import demo_model_dir

        if model_dir is not None and self._prefilled_for != model_dir:
            self._prefilled_for = model_dir
            if Path(model_dir) == demo_model_dir() and not self.prompt.text().strip():
                self.prompt.setText(demo_question())
        self.system.setPlainText("")
        if run is not None:
            self.slots["try-system"].start(system_prompt_job, run, on_ok=self._system_prompt, quiet_gc=True)

    def _system_prompt(self, text):
        if not self.system.toPlainText().strip():
            self.system.setPlainText(text or "")

    def refresh(self):
        s = self.session
        model_dir, run = self._target()
        chatting, evaluating = self.slots.running("try"), self.slots.running("eval")
        if model_dir is None:
            why = "Choose a model first (step 1)."
        elif chatting or evaluating:
            why = "Wait for the answers, or press Stop."
        elif self.tools_error:
            why = "Fix the tool definitions (Tools), or clear them."
        else:
            why = None
        for send in self.result_sends.values():
            send.setEnabled(not (chatting or evaluating))
        self.ask_btn.setEnabled(why is None)
        self.ask_btn.setToolTip(why or "Ask both models (Enter).")
        self.stop_btn.setEnabled(chatting)
        self.tuned_out.setPlaceholderText("" if run else "Train a model first (step 3), or pick a run in the history: "
                                          "its answers appear here.")
        if run is None:
            ewhy = "Train a model first (step 3), or pick a run in the history."
        elif chatting or evaluating:
            ewhy = "Wait for the answers, or press Stop."
        else:
            ewhy = None
        self.eval_btn.setEnabled(ewhy is None)
        self.eval_btn.setToolTip(ewhy or "Answer every test example (never seen in training) with both models and score the answers.")
        self.eval_stop.setEnabled(evaluating)
        if s.model_dir is not None and not self.prompt.text().strip() and self._prefilled_for is None:
            self._new_target()

    # -- chat ----------------------------------------------------------------------------------
    def sampling(self):
        from core.generate import Sampling

        seed = self.seed.text().strip()
        return Sampling(temperature=self.temperature.value(), top_p=self.top_p.value(),
                        max_tokens=self.max_tokens.value(), seed=int(seed) if seed.lstrip("-").isdigit() else None)

    def ask(self):
        model_dir, run = self._target()
        text = self.prompt.text().strip()
        if model_dir is None or not text or self.slots.running("try") or self.slots.running("eval"):
            return
        if self.tools_error:
            self.status.setText("Fix the tool definitions first (Tools): " + self.tools_error)
            return
        self._clear_waiting()  # a new question: calls not answered stay unanswered
        self._sides = ("base", "tuned") if run else ("base",)
        self._questions.append(text)
        self.show_questions()
        for side in self._sides:
            view = self.view(side)
            if view.toPlainText():  # a rule with the question's number between one answer and the next
                q = text if len(text) <= 60 else text[:57] + "..."
                view.append_text(f"\n\n\u2500\u2500 {len(self._questions)}. {q} \u2500\u2500\n")
            view.mark_answer()
        self.prompt.clear()
        self.buffer.drain()
        self.status.setText("Loading the models..." if self.holder.key != (str(model_dir), str(run) if run else None)
                            else "Answering...")
        self.slots["try"].start(chat_turn, self.holder, model_dir, run, text, self.sampling(),
                                self.system.toPlainText().strip(), self.buffer, tools=self.tools,
                                on_progress=lambda _d, _t, what: self.status.setText(what[:80] + "..."),
                                on_ok=self._answered, on_failed=self._failed, on_ended=self._ended,
                                # no full garbage collection on the GUI thread when the answer ends (a ~100 ms
                                # stall); streaming makes no reference cycles worth collecting
                                quiet_gc=True)
        self.flush_timer.start()
        self.refresh()

    def show_questions(self):
        import html

        if not self._questions:
            self.questions.setText("")
            return
        items = "".join(f"<li>{html.escape(q)}</li>" for q in self._questions)
        self.questions.setText(f"<b>You asked</b> (each model answers in turn below, continuing its own "
                               f"conversation):<ol style='margin-top:2px; margin-bottom:0'>{items}</ol>")

    def view(self, side: str) -> AnswerView:
        return self.base_out if side == "base" else self.tuned_out

    def _flush(self):
        items = self.buffer.drain()
        if not items:
            return
        if self.status.text().startswith("Loading") or self.status.text().endswith("..."):
            self.status.setText("Answering...")
        pieces: dict[str, list[str]] = {}
        calls: dict[str, list[dict]] = {}
        for ch in items:
            if ch.done and ch.reason == "error":
                pieces.setdefault(ch.side, []).append(f"\n[error: {ch.text}]")
            elif ch.text:
                pieces.setdefault(ch.side, []).append(ch.text)
            if ch.done and getattr(ch, "calls", None):
                calls[ch.side] = ch.calls  # the last chunk of an answer: nothing of it follows
        for side, parts in pieces.items():
            self.view(side).append_text("".join(parts))
        for side, cs in calls.items():
            self._show_waiting(side, cs)

    def stop(self):
        self.slots["try"].stop()

    def new_chat(self):
        if self.slots.running("try"):
            self._reset_after_stop = True
            self.slots["try"].stop()
        else:
            self._clear_chat()

    def _clear_chat(self):
        if self.holder.chat is not None:
            self.holder.chat.reset()
        self.buffer.drain()
        self.base_out.clear()
        self.tuned_out.clear()
        self.base_out.mark_answer()
        self.tuned_out.mark_answer()
        self._clear_waiting()
        self._questions = []
        self.show_questions()
        self.status.setText("")

    def _answered(self, turn):
        reasons = set(turn.reasons.values())
        if reasons == {"cancelled"} or "cancelled" in reasons:
            self.status.setText("Stopped. Ask again to continue the conversation.")
        elif "length" in reasons:
            self.status.setText("An answer reached the token limit (Max tokens).")
        else:
            self.status.setText("")

    def _failed(self, exc):
        self._flush()
        if isinstance(exc, Cancelled):
            self.status.setText("Stopped.")
        else:
            self.status.setText(error_text(exc))

    def _ended(self):
        self.flush_timer.stop()
        self._flush()
        if self._reset_after_stop:
            self._reset_after_stop = False
            self._clear_chat()
        self.refresh()

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self):
        model_dir, run = self._target()
        if run is None or self.slots.running("try") or self.slots.running("eval"):
            return
        data = [p for p in (self.eval_file.text().strip(),) if p]
        self.tabs.setCurrentIndex(1)
        self.table.run_dir = run
        self.table.clear("Evaluating both models...")
        self.eval_progress.setVisible(True)
        self.eval_progress.setRange(0, 0)
        self._eval_warnings: list[str] = []
        self.eval_summary.setText("")
        self.slots["eval"].start(evaluate_job, self.holder, model_dir, run, data,
                                 self.eval_limit.value() or None, self._rows.row.emit, self.eval_drift.isChecked(),
                                 on_progress=self._eval_progress, on_log=self._eval_log, on_ok=self._evaluated,
                                 on_failed=self._eval_failed, on_ended=self._eval_ended)
        self.refresh()

    def browse_eval_file(self):
        from PySide6.QtWidgets import QFileDialog

        from core.data import KNOWN_SUFFIXES

        start = self.eval_file.text().strip() or str(Path.home())
        pattern = " ".join(f"*{s}" for s in sorted(KNOWN_SUFFIXES))
        path, _ = QFileDialog.getOpenFileName(self, "Evaluate on a data file", start,
                                              f"Data files ({pattern});;All files (*)")
        if path:
            self.eval_file.setText(path)

    def _eval_log(self, level: str, text: str):
        if level in ("warning", "error"):
            self._eval_warnings.append(text)

    def _eval_progress(self, done, total, what):
        if done is not None and total:
            self.eval_progress.setRange(0, int(total))
            self.eval_progress.setValue(int(done))
        self.eval_progress.setFormat(what[:70])
        self.table.status.setText(what)

    def _eval_row(self, row):
        if self.slots.running("eval"):
            self.table.add_row(row)

    def _evaluated(self, result):
        self.table.set_result(result)
        if self._eval_warnings:  # examples left out (a bad line): said where, not skipped silently
            self.table.status.setText(self.table.status.text() + "<br>" + theme.span(
                "Left out:", "warning", self.palette(), bold=True) + " " + html.escape(" ".join(self._eval_warnings)))
        self.eval_summary.setText(eval_summary_text(result))

    def _adapter_changed(self, _i):
        self.holder.adapter = self.eval_adapter.currentData()  # the next question or evaluation loads it

    def _eval_failed(self, exc):
        if isinstance(exc, Cancelled) and getattr(exc, "result", None) is not None and exc.result.rows:
            self.table.set_result(exc.result)
        else:
            self.table.status.setText(error_text(exc))

    def _eval_ended(self):
        self.eval_progress.setVisible(False)
        self.refresh()

    def close_request(self) -> bool:
        self.slots["try"].stop()
        self.slots["eval"].stop()
        return True

    def keyPressEvent(self, event):  # Escape stops the answers
        if event.key() == Qt.Key.Key_Escape and self.slots.running("try"):
            self.stop()
            return
        super().keyPressEvent(event)
