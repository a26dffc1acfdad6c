"""The Data page's preview: examples as a chat, or as the exact text the model is trained on."""
from __future__ import annotations

import html

from PySide6.QtCore import QEvent
from PySide6.QtGui import QFontDatabase, QPalette
from PySide6.QtWidgets import QTextBrowser

from app.gui import theme

MAX_CHARS = 4000  # per message shown; the rest is summarised (layout of huge texts is slow)
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def _clip(text: str, limit: int = MAX_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit:,} more characters)"


def _html_text(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


class ChatView(QTextBrowser):
    """Shows the first examples of a dataset. ``mode`` is "chat" (bubbles per role) or
    "training" (the chat template applied; the parts not trained on greyed out)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setOpenLinks(False)
        self.setAcceptDrops(False)  # drops go to the window
        self.records: list = []
        self.runs: list[list[tuple[str, bool]]] | None = None
        self.runs_note = ""
        self.total = 0
        self.mode = "chat"
        self.empty_text = "No examples yet."

    # -- state in
    def set_records(self, records: list, total: int):
        self.records, self.total = list(records), total
        self.runs = None
        self.runs_note = ""
        self.render()

    def set_training_runs(self, runs: list[list[tuple[str, bool]]] | None, note: str = ""):
        self.runs, self.runs_note = runs, note
        if self.mode == "training":
            self.render()

    def set_mode(self, mode: str):
        self.mode = mode
        self.render()

    def clear_all(self, text: str = "No examples yet."):
        self.records, self.runs, self.total, self.empty_text = [], None, 0, text
        self.render()

    # -- rendering
    def changeEvent(self, event):
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self.render()
        super().changeEvent(event)

    def render(self):
        pal = self.palette()
        scroll = self.verticalScrollBar().value()
        if not self.records:
            self.setHtml(f"<p style='color:{theme.muted(pal).name()}'>{html.escape(self.empty_text)}</p>")
            return
        body = self._training_html(pal) if self.mode == "training" else self._chat_html(pal)
        self.document().setDocumentMargin(10)
        self.setHtml(f"<html><body>{body}</body></html>")
        self.verticalScrollBar().setValue(scroll)

    def _header(self, i: int, r, pal) -> str:
        where = f"{html.escape(r.file)}, line {r.line}" if r.line else html.escape(r.file)
        return (f"<p style='margin-top:14px; margin-bottom:4px; color:{theme.muted(pal).name()}'>"
                f"<b>Example {i + 1}</b> &nbsp;·&nbsp; {where}</p>")

    def _footer(self, pal) -> str:
        if self.total > len(self.records):
            return (f"<p style='margin-top:14px; color:{theme.muted(pal).name()}'>The first {len(self.records)} of "
                    f"{self.total:,} examples.</p>")
        return ""

    def _chat_html(self, pal) -> str:
        out = []
        text_col = pal.color(QPalette.ColorRole.Text).name()
        for i, r in enumerate(self.records):
            out.append(self._header(i, r, pal))
            for m in r.messages:
                role = m.get("role", "user")
                name = ROLE_NAMES.get(role, role.title())
                key = role if role in ROLE_NAMES else "tool"
                content = m.get("content")
                content = content if isinstance(content, str) else str(content)
                is_user = role == "user"
                align = "right" if is_user else "left"
                width = "100%" if role == "system" else "82%"
                style = "font-style:italic;" if role == "system" else ""
                out.append(
                    f"<table width='{width}' align='{align}' cellspacing='0' cellpadding='8' "
                    f"bgcolor='{theme.tint(key, pal).name()}' style='margin-bottom:6px'>"
                    f"<tr><td><span style='color:{theme.accent(key, pal).name()}; font-weight:600; "
                    f"font-size:small'>{name}</span><br>"
                    f"<span style='color:{text_col}; {style}'>{_html_text(_clip(content))}</span></td></tr></table>")
            out.append("<br clear='all'>")
        out.append(self._footer(pal))
        return "".join(out)

    def _training_html(self, pal) -> str:
        muted = theme.muted(pal).name()
        text_col = pal.color(QPalette.ColorRole.Text).name()
        mark = theme.tint("ok", pal, 0.22).name()
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont).family()
        legend = (f"<p style='color:{muted}'>The text the model sees, with the model's chat template applied. "
                  f"<span style='color:{muted}'>Grey: read, not learned (the prompt).</span> "
                  f"<span style='background-color:{mark}; color:{text_col}'>&nbsp;Highlighted: what the model "
                  f"learns to write.&nbsp;</span></p>")
        if self.runs is None:
            note = self.runs_note or "Measuring with the model's tokenizer..."
            return legend + f"<p style='color:{muted}'>{html.escape(note)}</p>"
        out = [legend]
        if self.runs_note:
            out.append(f"<p style='color:{theme.accent('warning', pal).name()}'>{html.escape(self.runs_note)}</p>")
        for i, r in enumerate(self.records[:len(self.runs)]):
            out.append(self._header(i, r, pal))
            parts = []
            for text, trained in self.runs[i]:
                t = html.escape(_clip(text))
                if trained:
                    parts.append(f"<span style='background-color:{mark}; color:{text_col}'>{t}</span>")
                else:
                    parts.append(f"<span style='color:{muted}'>{t}</span>")
            out.append(f"<p style='white-space:pre-wrap; font-family:\"{mono}\"; margin-top:0'>{''.join(parts)}</p>")
        out.append(self._footer(pal))
        return "".join(out)
