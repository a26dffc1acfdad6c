"""Step 5, Export: one GGUF file and an Ollama Modelfile, registered in Ollama and verified, in one click.

Everything is checked before anything is written (core.export.pipeline.plan_export); the GGUF and the
Modelfile land together or not at all. When Ollama is not running the files are still written
and Retry registers them once it runs. Each export is recorded in the run's ``exports/`` folder.
"""
from __future__ import annotations

import html
import json

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QMessageBox,
                               QPlainTextEdit, QPushButton, QVBoxLayout, QWidget)

from app.gui.export_stages import ExportStages
from app.gui.pages.base import AppContext, Page, error_text
from app.gui.notify import show_in_folder
from app.gui.run_bar import RunBar, other_writer, writer_words
from app.gui.widgets import fill_adapter_choices
from core.export.run import answer_check, export_run, export_sizes, register_run
from core.export.quants import OFFERED
from core.export.quants import QUANTS as QUANT_TABLE

# each type offered: its key, its name, and one line saying its size, its quality and when to pick it (core.export.quants)
QUANTS = [(QUANT_TABLE[k].name, QUANT_TABLE[k].label, QUANT_TABLE[k].blurb) for k in OFFERED]
MEASURE_TIP = ("Write each size once and let llama.cpp read it: how often it picks the same next token as the model "
               "you trained, on your test examples (a minute or more).")


def _size(n: int) -> str:
    from core.units import fmt_bytes

    return fmt_bytes(n)


def tool_check_html(check: dict | None) -> str:
    """The verify step's tool check (core.export.ollama.check_tool_answer) as a line of the result, or ''."""
    if not check:
        return ""

    def calls(cs):
        return "; ".join(f"{c.get('name')}({json.dumps(c.get('arguments'), ensure_ascii=False)})" for c in cs or [])

    q = html.escape(str(check.get("question") or "")[:200])
    if check.get("match"):
        return f"<br><br><b>Tool check:</b> {q}<br>Ollama parsed the expected call: {html.escape(calls(check['ollama']))}"
    return (f"<br><br><b>Tool check:</b> {q}<br>Ollama parsed: {html.escape(calls(check.get('ollama')) or 'no call')}"
            f"<br>Expected: {html.escape(calls(check.get('expected')) or 'no call')}")


def check_name_job(name, events=None, cancel=None):
    """Whether Ollama has ``name`` already (None: no server answered)."""
    from core.export import ollama as ol

    return ol.model_exists(name)


class ExportPage(Page):
    key = "export"
    title = "5. Export"
    blurb = ("Put your fine-tuned model in Ollama: one GGUF file (the model, merged and quantized) and a Modelfile, "
             "registered and checked with a question from your validation set.")

    def __init__(self, ctx: AppContext):
        super().__init__(ctx, scroll=True)  # with "More places" open it is taller than 700 pixels
        self.run_bar = RunBar(ctx, "export", "Export writes this run")  # the current run, named
        self.layout_.addWidget(self.run_bar)
        self._sizes: dict[str, int] = {}
        self._last: dict = {}  # what the last export was asked to do (for Retry)
        from PySide6.QtCore import QTimer

        self._lock_timer = QTimer(self)  # while another process trains the run: look again now and then
        self._lock_timer.setSingleShot(True)
        self._lock_timer.setInterval(2000)
        self._lock_timer.timeout.connect(lambda: self.refresh())

        form = self._build_form()
        row = self._build_buttons()
        self._build_result()
        self._build_measure(form)

        self.layout_.addLayout(form)
        self.layout_.addLayout(row)
        self.layout_.addWidget(self.stages)
        self.layout_.addWidget(self.result)
        self.layout_.addWidget(self.after)
        # the other places (LM Studio, MLX, PEFT, the Hub) fold away: the page fits 1024x700 with them closed
        from app.gui.widgets import Section

        self.ship_section = Section("More places: LM Studio, MLX, PEFT, Hugging Face Hub")
        self.ship_section.setObjectName("export.more")
        self.ship_section.addWidget(self.ship)
        self.ship_section.collapse(animate=False)
        self.layout_.addWidget(self.ship_section)
        self.layout_.addStretch(1)

        self.export_btn.clicked.connect(self.export)
        self.gguf_btn.clicked.connect(self.save_gguf)
        self.cancel_btn.clicked.connect(self.cancel)
        self.retry_btn.clicked.connect(self.retry)
        self.copy_btn.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.command.text()))
        self.reveal_gguf.clicked.connect(lambda: self._reveal("gguf"))
        self.reveal_mf.clicked.connect(lambda: self._reveal("modelfile"))
        self.name.textChanged.connect(lambda _t: self.refresh())
        self.quant.currentIndexChanged.connect(lambda _i: self.refresh())
        self.quant.currentIndexChanged.connect(lambda _i: self.ship.update_sizes())
        self.quant.currentIndexChanged.connect(lambda _i: self._explain_quant())
        self._explain_quant()
        self.refresh()

    def _build_form(self) -> QFormLayout:
        """The form: Ollama name, Size, What to export, Adapter, System prompt, Temperature (Quality comes later)."""
        form = QFormLayout()
        self.quant = QComboBox()
        self.quant.setObjectName("export.quant")
        for key, label, why in QUANTS:
            self.quant.addItem(label, key)
            self.quant.setItemData(self.quant.count() - 1, why, Qt.ItemDataRole.ToolTipRole)
        self.quant.setToolTip("How the weights are stored: smaller files answer faster and lose a little quality.")
        self.name = QLineEdit("my-tuneloom-model")
        self.name.setObjectName("export.name")
        self.name_note = QLabel("")
        self.name_note.setObjectName("export.name_note")
        self.name_note.setWordWrap(True)
        self.system = QPlainTextEdit()
        self.system.setObjectName("export.system")
        self.system.setPlaceholderText("No system prompt")
        self.system.setMaximumHeight(56)
        self.system.setToolTip("Baked into the Modelfile (SYSTEM): Ollama uses it when a chat brings none.")
        self.temperature = QDoubleSpinBox()
        self.temperature.setObjectName("export.temperature")
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        from core.export.ollama import DEFAULT_TEMPERATURE

        self.temperature.setValue(DEFAULT_TEMPERATURE)
        self.temperature.setToolTip("Baked into the Modelfile (PARAMETER temperature): 0 always gives the same answer.")
        name_box = QWidget()
        nb = QHBoxLayout(name_box)
        nb.setContentsMargins(0, 0, 0, 0)
        nb.addWidget(self.name, 1)
        form.addRow("Ollama name", name_box)
        form.addRow("", self.name_note)
        form.addRow("Size", self.quant)
        self.quant_note = QLabel("")
        self.quant_note.setObjectName("export.quant_note")
        self.quant_note.setWordWrap(True)
        # right under the Size box: a form row's wrapped label is given more height than its lines need
        self.quant_note.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        form.addRow("", self.quant_note)
        from app.gui.ship_panel import ShipPanel  # issue 29: merged/adapter choice, other targets, Share

        self.ship = ShipPanel(self)
        form.addRow("What to export", self.ship.kind_box)
        # issue 28: the best adapter (lowest validation loss) by default, the last one a choice away
        self.adapter_choice = QComboBox()
        self.adapter_choice.setObjectName("export.adapter")
        # labelled with the run's steps (core.runs.adapter_choices), again when the run changes (session_changed)
        fill_adapter_choices(self.adapter_choice, self.session.run_dir if self.session.trained else None)
        self.adapter_choice.setToolTip("Which of the run's adapters the export merges: the one from the step with the "
                                       "lowest validation loss (what Try uses by default), or the last one.")
        form.addRow("Adapter", self.adapter_choice)
        form.addRow("System prompt", self.system)
        form.addRow("Temperature", self.temperature)
        return form

    def _build_buttons(self) -> QHBoxLayout:
        """The export's buttons: Export to Ollama, Save GGUF only, Cancel, Retry."""
        self.export_btn = QPushButton("Export to Ollama")
        self.export_btn.setObjectName("export.ollama")
        self.export_btn.setDefault(True)
        self.gguf_btn = QPushButton("Save GGUF only")
        self.gguf_btn.setObjectName("export.gguf_only")
        self.gguf_btn.setToolTip("Write the GGUF file and Modelfile (for llama.cpp, LM Studio, or Ollama later).")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setObjectName("export.cancel")
        self.cancel_btn.setEnabled(False)
        self.retry_btn = QPushButton("Retry")
        self.retry_btn.setObjectName("export.retry")
        self.retry_btn.setToolTip("Register the files already written, now that Ollama runs.")
        self.retry_btn.setVisible(False)
        row = QHBoxLayout()
        for b in (self.export_btn, self.gguf_btn, self.cancel_btn, self.retry_btn):
            row.addWidget(b)
        row.addStretch(1)
        return row

    def _build_result(self) -> None:
        """The stages, the result, and what follows an export (the command, Copy, the Show in folder buttons)."""
        self.stages = ExportStages()
        self.result = QLabel("")
        self.result.setObjectName("export.result")
        self.result.setWordWrap(True)
        self.result.setTextFormat(Qt.TextFormat.RichText)
        # selectable, and its links (where to get Ollama) open in the browser
        self.result.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.result.setOpenExternalLinks(True)
        self._result_html = self._result_shown = None  # the last result with links, and as shown
        self.command = QLineEdit()
        self.command.setObjectName("export.command")
        self.command.setReadOnly(True)
        self.copy_btn = QPushButton("Copy")
        self.copy_btn.setObjectName("export.copy")
        self.reveal_gguf = QPushButton("Show GGUF in folder")
        self.reveal_gguf.setObjectName("export.reveal_gguf")
        self.reveal_mf = QPushButton("Show Modelfile in folder")
        self.reveal_mf.setObjectName("export.reveal_modelfile")
        self.after = QWidget()
        av = QVBoxLayout(self.after)
        av.setContentsMargins(0, 0, 0, 0)
        av.addWidget(self.command)  # a row of its own: the whole command fits
        ar = QHBoxLayout()
        av.addLayout(ar)
        ar.addStretch(1)
        ar.addWidget(self.copy_btn)
        ar.addWidget(self.reveal_gguf)
        ar.addWidget(self.reveal_mf)
        self.after.setVisible(False)

    def _build_measure(self, form) -> None:
        """The Quality row: measure the price of each size on request, and what it measured."""
        # issue 28: the price of each quantization, measured on request (core.export.quant_price)
        self.measure_btn = QPushButton("Measure the quality of each size")
        self.measure_btn.setObjectName("export.measure")
        self.measure_btn.setToolTip(MEASURE_TIP)
        self.price = QLabel("")
        self.price.setObjectName("export.price")
        self.price.setWordWrap(True)
        self.price.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.measure_btn.clicked.connect(self.measure)
        form.addRow("Quality", self.measure_btn)
        form.addRow("", self.price)

    # -- settings and session ------------------------------------------------------------------
    def restore_settings(self):
        quant = str(self.settings.value("export/quant", self.quant.currentData()))
        i = self.quant.findData(quant.lower())
        if i >= 0:
            self.quant.setCurrentIndex(i)
        self.name.setText(str(self.settings.value("export/name", self.name.text())))

    def save_settings(self):
        self.settings.setValue("export/quant", self.quant.currentData())
        self.settings.setValue("export/name", self.name.text())

    def session_changed(self, names: set):
        if names & {"run_dir", "model_dir"}:
            self._run_changed()
        if names & {"run_dir", "run_version"}:  # a run trained or switched: its adapters' steps
            fill_adapter_choices(self.adapter_choice, self.session.run_dir if self.session.trained else None)
        if names & {"run_dir", "run_version", "jobs"}:
            self.refresh()

    def _run_changed(self):
        run = self.session.run_dir
        self._sizes = {}
        self.retry_btn.setVisible(False)
        if run is not None and self.session.trained:
            from core.generate import trained_system_prompt

            # the sizes come from every tensor's header and the vocabulary (a large tokenizer.json takes a
            # moment to read): off the GUI thread
            self.slots["export-sizes"].start(export_sizes, run, quiet_gc=True, on_ok=self._show_sizes,
                                             on_failed=lambda _exc: None)  # a broken run says so when exported
            from core import runs

            cfg = runs.RunFolder(run).config
            self.system.setPlainText(next((cfg[k] for k in ("system", "system_prompt")
                                           if isinstance(cfg.get(k), str)), ""))
            self.slots["export-system"].start(lambda run_dir, events=None, cancel=None:
                                              trained_system_prompt(run_dir), run, quiet_gc=True,
                                              on_ok=lambda t: self.system.toPlainText() or
                                              self.system.setPlainText(t or ""))
        self._show_sizes({})

    def _show_sizes(self, sizes: dict):
        self._sizes = dict(sizes)
        for i, (key, label, _why) in enumerate(QUANTS):
            n = self._sizes.get(key)
            self.quant.setItemText(i, f"{label}  ·  about {_size(n)}" if n else label)
        self.ship.update_sizes()
        self._explain_quant()
        self._show_price()

    def _explain_quant(self):
        key = self.quant.currentData()
        why = next((w for k, _l, w in QUANTS if k == key), "")
        n = self._sizes.get(key)
        self.quant_note.setText(html.escape((f"About {_size(n)}. " if n else "") + why, quote=False))

    # -- the price of each quantization (issue 28) ----------------------------------------------
    def _show_price(self, table: dict | None = None):
        """The measured agreement beside each size, and the table under the button."""
        from core.export.quant_price import price_text, read_price

        run = self.session.run_dir if self.session.trained else None
        if table is None:
            table = (read_price(run).get("quants") or {}) if run is not None else {}
        for i, (key, label, _why) in enumerate(QUANTS):
            row = table.get(key)
            if row:
                self.quant.setItemText(i, price_text(key, row).replace(key.upper(), label, 1))
        self.price.setText("\n".join(f"{price_text(q, r)} · KL {r['kl_per_token']:.4f}" for q, r in table.items())
                           if table else "Not measured yet.")

    def measure(self):
        run = self.session.run_dir
        if run is None or not self.session.trained or self.slots.running("export-measure"):
            return
        from core.export.quant_price import measure_quants

        self.measure_btn.setEnabled(False)
        self.price.setText("Measuring each size...")
        self.slots["export-measure"].start(
            lambda run_dir, events=None, cancel=None: measure_quants(run_dir, events=events, cancel=cancel), run,
            on_progress=lambda d, t, what: self.price.setText(f"Measuring: {what}"),
            on_ok=self._show_price, on_failed=lambda exc: self.price.setText(error_text(exc)),
            on_ended=self.refresh)

    # -- state ---------------------------------------------------------------------------------
    def name_problem(self) -> str | None:
        from core.export import ollama as ol

        try:
            ol.validate_model_name(self.name.text().strip())
        except ol.OllamaNameInvalid as exc:
            return f"Not a valid Ollama name. {exc.hint}" if exc.hint else exc.user_message()
        return None

    def writer_why(self) -> str | None:
        """Why nothing may write the current run now: another process trains it (its OS lock), or None."""
        pid = other_writer(self.session.run_dir, self.session) if self.session.run_dir is not None else None
        if pid is None:
            return None
        if not self._lock_timer.isActive():  # look again until it has finished
            self._lock_timer.start()
        words = writer_words(pid)
        return words[0].upper() + words[1:] + " before exporting it."

    def refresh(self):
        busy = self.slots.running("export") or self.slots.running("export-check")
        run_why = None if self.session.trained else "Train a model first (step 3), or pick a run in the history."
        run_why = run_why or self.writer_why()
        problem = self.name_problem()
        self.name_note.setText(html.escape(problem) if problem else "")
        self.name_note.setVisible(bool(problem))
        self.name_note.setStyleSheet("color: #c0392b" if problem else "")
        why = run_why or problem or ("An export is running." if busy else None)
        self.export_btn.setEnabled(why is None)
        self.export_btn.setToolTip(why or "Write the GGUF and Modelfile, register them in Ollama and check the "
                                          "model answers.")
        gwhy = run_why or ("An export is running." if busy else None)
        self.gguf_btn.setEnabled(gwhy is None)
        self.gguf_btn.setToolTip(gwhy or "Write the GGUF file and Modelfile (for llama.cpp, LM Studio, or Ollama "
                                          "later).")
        measuring = "export-measure" in self.slots and self.slots["export-measure"].state != "idle"
        self.measure_btn.setEnabled(run_why is None and not measuring)
        self.measure_btn.setToolTip(run_why or MEASURE_TIP)
        self.cancel_btn.setEnabled(busy)
        self.retry_btn.setEnabled(not busy and problem is None)
        self.ship.refresh()

    # -- actions -------------------------------------------------------------------------------
    def _request(self, register: bool) -> dict:
        return {"run_dir": self.session.run_dir, "quant": self.quant.currentData(), "name": self.name.text().strip(),
                "system": self.system.toPlainText().strip(), "temperature": self.temperature.value(),
                "register": register, "adapter_only": self.ship.adapter_only(),
                "final": self.adapter_choice.currentData() == "final"}

    def export(self):
        """Export to Ollama: ask about a name Ollama has already (before writing), then export."""
        if not self.session.trained or self.name_problem():
            self.refresh()
            return
        req = self._request(True)
        self.result.setText("Checking the name with Ollama...")
        self.slots["export-check"].start(check_name_job, req["name"], quiet_gc=True, on_ok=lambda taken: self._checked(req, taken),
                                         on_failed=lambda exc: self._checked(req, None),
                                         on_ended=self.refresh)
        self.refresh()

    def confirm_replace(self, name: str) -> bool:
        """The one question of the flow: replace the model Ollama has under that name?"""
        box = QMessageBox.question(self.ctx.window, "Replace the model in Ollama?",
                                   f"Ollama already has a model named “{name}”. Replace it with this export?",
                                   QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                   QMessageBox.StandardButton.No)
        return box == QMessageBox.StandardButton.Yes

    def _checked(self, req: dict, taken):
        force = False
        if taken:
            if not self.confirm_replace(req["name"]):
                self.result.setText("Not exported: choose another name, or export again and replace it.")
                return
            force = True
        self._start(req, force)

    def save_gguf(self):
        if not self.session.trained:
            return
        self._start(self._request(False), False)

    def _start(self, req: dict, force: bool):
        self._last = dict(req, force=force)
        self.retry_btn.setVisible(False)
        self.after.setVisible(False)
        stages = ("fuse", "gguf", "upload", "create", "verify") if req["register"] else ("fuse", "gguf")
        self.stages.reset(stages[1:] if req.get("adapter_only") else stages)  # an adapter is not merged
        self.result.setText("Exporting...")
        self.slots["export"].start(export_run, req["run_dir"], req["quant"], req["name"], req["system"],
                                   req["temperature"], force, req["register"], adapter_only=req.get("adapter_only"),
                                   final=bool(req.get("final")),
                                   **self._handlers())
        self.refresh()

    def retry(self):
        req = self._last
        if not req or self.slots.running("export"):
            return
        if req.get("adapter_only"):  # the shared base is reused: exporting again costs only the adapter
            self._start(req, req["force"])
            return
        self.retry_btn.setVisible(False)
        self.stages.reset(("upload", "create", "verify"))
        for k in ("fuse", "gguf"):
            self.stages._set(k, "done", "written before")
        self.result.setText("Registering in Ollama...")
        self.slots["export"].start(register_run, req["run_dir"], req["quant"], req["name"], req["system"],
                                   req["temperature"], req["force"], **self._handlers())
        self.refresh()

    def _handlers(self) -> dict:
        return dict(on_progress=self.stages.progress, on_stage=self.stages.stage, on_stage_done=self._stage_done,
                    on_ok=self._done, on_failed=self._failed, on_ended=self._ended)

    def cancel(self):
        self.slots["export"].stop()

    def _stage_done(self, name: str, ok, _seconds, _detail):
        if ok is False:
            self.stages.fail("failed", name)
        else:
            self.stages.done(name)

    def _ended(self):
        self.refresh()
        self.session.touch_run()

    def _failed(self, exc):
        from core.events import Cancelled

        if isinstance(exc, Cancelled):
            self.stages.fail("cancelled")
            self.result.setText("Cancelled: nothing was kept of this export.")
        else:
            self.stages.fail("failed")
            self.result.setText("Export failed: " + html.escape(error_text(exc)).replace("\n", "<br>"))

    def _files_html(self, res) -> str:
        return (f"<b>GGUF:</b> {html.escape(str(res['gguf']))}<br><b>Modelfile:</b> "
                f"{html.escape(str(res['modelfile']))}<br>")

    def _done(self, res):
        from core.export import ollama as ol

        self._paths = {"gguf": res.get("gguf"), "modelfile": res.get("modelfile")}
        self.after.setVisible(True)
        msg = self._files_html(res)
        err = res.get("ollama_error")
        reg = res.get("ollama")
        if reg:
            name = reg.get("name")
            self.set_command(f"ollama run {name}")
            msg += f"Registered in Ollama as <b>{html.escape(str(name))}</b>" + (
                " (replaced the old one)." if reg.get("replaced") else ".")
            check = answer_check(res)
            if check:
                msg += (f"<br><br><b>Check:</b> {html.escape(check['question'][:200])}<table cellpadding='4'>"
                        f"<tr><td><b>Ollama</b></td><td>{html.escape(check['ollama'])[:600]}</td></tr>"
                        f"<tr><td><b>Tuneloom</b></td><td>{html.escape(check['tuneloom'])[:600]}"
                        f"</td></tr></table>" + ("The same answer." if check["same"] else
                                                 "The answers differ (quantization changes a model a little)."))
            msg += tool_check_html(reg.get("tool_check"))
        elif err is not None:
            self.stages.fail("Ollama not running" if isinstance(err, ol.OllamaNotRunning) else "failed",
                             self.stages.current or "upload")
            self.set_command(res.get("ollama_command", ""))
            if isinstance(err, ol.OllamaNotRunning):
                how = ("Start Ollama (open the Ollama app, or run <code>ollama serve</code>), then press Retry."
                       if err.installed else
                       "Ollama is not installed: get it from <a href='https://ollama.com/download'>ollama.com/download"
                       "</a>, start it, then press Retry.")
                msg += f"The files are written. <b>{html.escape(str(err.args[0]) if err.args else str(err))}"\
                       f"</b><br>{how}<br>Or register by hand (<code>ollama create</code>):"
            else:
                msg += f"The files are written, but Ollama said: {html.escape(error_text(err))}<br>Retry, or run:"
            self.retry_btn.setVisible(True)
        else:
            self.set_command(res.get("ollama_command", ""))
            msg += "Saved. To use it in Ollama later, run (<code>ollama create</code>):"
        self._show_result_html(msg)
        self.refresh()

    def _show_result_html(self, msg: str):
        from app.gui import theme

        self._result_html = msg
        self._result_shown = theme.link_colours(msg, self.palette())
        self.result.setText(self._result_shown)

    def changeEvent(self, event):
        from PySide6.QtCore import QEvent

        if (event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange)
                and self._result_html is not None and self.result.text() == self._result_shown):
            self._show_result_html(self._result_html)  # its links in the new palette's colour
        super().changeEvent(event)

    def set_command(self, text: str) -> None:
        """The command to run, shown from its start (a long path runs off the right, not the command's name)."""
        self.command.setText(text)
        self.command.setCursorPosition(0)
        self.command.setToolTip(text)

    def _reveal(self, which: str):
        p = getattr(self, "_paths", {}).get(which)
        if p:
            self.reveal(p)

    def reveal(self, path) -> bool:
        """Show ``path`` in the file manager, or say visibly that there is none (app.gui.notify)."""
        return show_in_folder(self.ctx, path)
