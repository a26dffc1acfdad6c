"""Step 4, Try: ask the original and the fine-tuned model the same question."""
from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QPushButton

from app.gui.pages.base import AppContext, Page, error_text
from core.events import Cancelled


def answer_both(model_dir, run_dir, messages, events=None, cancel=None) -> dict:
    """The base model's answer, and the fine-tuned one's when the run has adapters."""
    from core.generate import ChatModel

    base = ChatModel(model_dir)
    out = {"base": base.answer(messages, cancel=cancel)}
    if run_dir is not None and (run_dir / "adapters.safetensors").exists():
        out["tuned"] = ChatModel(model_dir, adapter_dir=run_dir, encoder=base.encoder).answer(messages, cancel=cancel)
    return out


class TryPage(Page):
    key = "try"
    title = "4. Try it"
    blurb = "Ask something and compare the original model with your fine-tune."

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        self.prompt = QLineEdit("Describe the blue kettle in structured format.")
        self.prompt.setObjectName("try.prompt")
        self.ask_btn = QPushButton("Ask both models")
        self.ask_btn.setObjectName("try.send")
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setEnabled(False)
        self.base_out = QPlainTextEdit()
        self.base_out.setObjectName("try.base")
        self.tuned_out = QPlainTextEdit()
        self.tuned_out.setObjectName("try.tuned")
        for w in (self.base_out, self.tuned_out):
            w.setReadOnly(True)
            w.setAcceptDrops(False)
        row = QHBoxLayout()
        row.addWidget(self.prompt, 1)
        row.addWidget(self.ask_btn)
        row.addWidget(self.stop_btn)
        self.layout_.addLayout(row)
        self.layout_.addWidget(QLabel("<b>Original model</b>"))
        self.layout_.addWidget(self.base_out)
        self.layout_.addWidget(QLabel("<b>Your fine-tuned model</b>"))
        self.layout_.addWidget(self.tuned_out)
        self.ask_btn.clicked.connect(self.ask)
        self.stop_btn.clicked.connect(self.stop)
        self.prompt.returnPressed.connect(self.ask)

    def ask(self):
        s = self.session
        text = self.prompt.text().strip()
        if s.model_dir is None or not text:
            return
        self.base_out.setPlainText("...")
        self.tuned_out.setPlainText("..." if s.run_dir else "(train a model first)")
        self.ask_btn.setEnabled(False)
        self.stop_btn.setEnabled(True)
        self.slots["try"].start(answer_both, s.model_dir, s.run_dir, [{"role": "user", "content": text}],
                                on_ok=self._answers, on_failed=self._failed, on_ended=self._ended)

    def stop(self):
        self.slots["try"].stop()

    def _ended(self):
        self.ask_btn.setEnabled(True)
        self.stop_btn.setEnabled(False)

    def _failed(self, exc):
        if isinstance(exc, Cancelled):
            for w in (self.base_out, self.tuned_out):
                if w.toPlainText() == "...":
                    w.setPlainText("(stopped)")
        else:
            self.base_out.setPlainText(error_text(exc))

    def _answers(self, out):
        self.base_out.setPlainText(out["base"])
        if "tuned" in out:
            self.tuned_out.setPlainText(out["tuned"])
