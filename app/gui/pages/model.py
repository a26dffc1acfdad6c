"""Step 1, Model: the catalog as cards (download, resume, cancel, use), a hub id, a local folder."""
from __future__ import annotations

import html
import re
import sys
from pathlib import Path

from PySide6.QtCore import QEvent, Qt, QTimer, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (QFileDialog, QFrame, QGridLayout, QHBoxLayout, QInputDialog, QLabel, QMessageBox,
                               QProgressBar, QPushButton, QScrollArea, QSizePolicy, QVBoxLayout, QWidget)

from app.gui import jobs as gj
from app.gui import theme
from app.gui.jobs import CardInfo, card_for_hub_id, catalog_cards, fetch_card
from app.gui.pages.base import AppContext, Page
from app.gui.pages.base import error_text as error_text
from app.gui.widgets import Panel, panel_label
from app.session import DEMO_NAME
from core import paths
from core.events import Cancelled

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MACHINE = "this Mac" if sys.platform == "darwin" else "this computer"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    from core.units import fmt_bytes as core_fmt

    return core_fmt(n)


def fmt_params(n: int | None) -> str:
    if not n:
        return ""
    if n >= 1e9:
        return f"{n / 1e9:.1f}B parameters"
    if n >= 1e6:
        return f"{n / 1e6:.0f}M parameters" if n >= 1e7 else f"{n / 1e6:.1f}M parameters"
    return f"{n / 1e3:.0f}K parameters"


class ModelCard(Panel):
    """One model: what it is, whether it fits, whether it is here; download / resume / cancel / use."""

    primary_clicked = Signal(object)  # self
    cancel_clicked = Signal(object)

    def __init__(self, info: CardInfo, parent=None):
        super().__init__(QPalette.ColorRole.Base, 10, parent)
        self.info = info
        self.setObjectName("ModelCard")
        self.selected = False
        self.state = "idle"  # idle / downloading / paused / failed
        self.message = ""
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        lay = QVBoxLayout(self)
        lay.setSpacing(4)
        top = QHBoxLayout()
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.badge = QLabel()
        top.addWidget(self.title, 1)
        top.addWidget(self.badge, 0, Qt.AlignmentFlag.AlignTop)
        lay.addLayout(top)
        self.subtitle = QLabel()
        self.facts = QLabel()
        self.facts.setWordWrap(True)
        self.fit = QLabel()
        self.fit.setWordWrap(True)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        for w in (self.subtitle, self.facts, self.fit, self.status, self.progress, self.detail):
            lay.addWidget(w)
        buttons = QHBoxLayout()
        self.primary = QPushButton()
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Stop the download; what has arrived is kept, and Resume continues from there.")
        buttons.addWidget(self.primary)
        buttons.addWidget(self.cancel)
        buttons.addStretch(1)
        lay.addLayout(buttons)
        self.primary.clicked.connect(lambda: self.primary_clicked.emit(self))
        self.cancel.clicked.connect(lambda: self.cancel_clicked.emit(self))
        tip = "\n".join(x for x in (info.notes, f"Chat format: {info.chat_format}" if info.chat_format else "",
                                    f"Revision: {info.revision}" if info.revision else "") if x)
        if tip:
            self.setToolTip(tip)
        self.refresh()

    @property
    def downloaded(self) -> bool:
        return self.info.path is not None

    # -- state changes
    def set_selected(self, on: bool):
        self.selected = on
        self.refresh()

    def start_download(self):
        self.state, self.message = "downloading", ""
        self.progress.setValue(0)
        self.progress.setFormat("starting...")
        self.detail.setText("Looking up the files...")
        self.refresh()

    def download_progress(self, done, total, what: str):
        if done is not None and total:
            self.progress.setValue(int(1000 * min(1.0, done / total)))
            self.progress.setFormat(f"%p%  ({fmt_bytes(done)} of {fmt_bytes(total)})")
        self.detail.setText(html.escape(what))

    def download_done(self, path: Path, problems: list[str]):
        self.info.path = Path(path)
        self.info.partial_bytes = 0
        self.state = "failed" if problems else "idle"
        self.message = "\n".join(problems)
        self.refresh()

    def download_stopped(self, kept_bytes: int, message: str):
        self.info.partial_bytes = kept_bytes
        self.state, self.message = "paused", message
        self.refresh()

    def download_failed(self, message: str):
        self.state, self.message = "failed", message
        self.refresh()

    # -- drawing
    def changeEvent(self, event):
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self.refresh()
        super().changeEvent(event)

    def refresh(self):
        i, pal = self.info, self.palette()
        muted = theme.muted(pal).name()
        self.title.setText(f"<b>{html.escape(i.name)}</b>")
        badge = "bundled, works offline" if i.bundled else ("4-bit (QLoRA)" if i.quantized else (
            "added by id" if i.entry is None else ""))
        self.badge.setText(f"<span style='color:{muted}'>{badge}</span>" if badge else "")
        self.subtitle.setText(f"<span style='color:{muted}'>{html.escape(i.hub_id or 'resources/demo/model')}</span>")
        facts = [x for x in (fmt_params(i.params),
                             f"{fmt_bytes(i.download_bytes)} download" if i.download_bytes else "",
                             f"licence {i.licence}" if i.licence else "",
                             f"{i.chat_format.split(' (')[0]} template" if i.chat_format else "") if x]
        self.facts.setText(" · ".join(facts) if facts else f"<span style='color:{muted}'>size and licence: "
                           "known once downloaded</span>")
        if i.fits is None:
            self.fit.setText(f"<span style='color:{muted}'>Memory needed: known once downloaded</span>")
        else:
            reason = i.fit_reason
            tight = i.fits and "tightly" in reason
            kind = "ok" if i.fits and not tight else ("warning" if i.fits else "error")
            head = f"Fits {MACHINE}, but tightly" if tight else (f"Fits {MACHINE}" if i.fits else
                                                                 f"Too large for {MACHINE}")
            for prefix in ("fits, but tightly: ", "fits: "):
                if reason.startswith(prefix):
                    reason = reason[len(prefix):]
            reason = reason[:1].upper() + reason[1:]
            self.fit.setText(theme.span(f"{head}.", kind, pal, bold=True) + " " + html.escape(reason))
        downloading = self.state == "downloading"
        self.progress.setVisible(downloading or self.state == "paused")
        self.detail.setVisible(downloading)
        self.cancel.setVisible(downloading)
        self.primary.setVisible(not downloading)
        self.primary.setEnabled(True)
        if downloading:
            status = "Downloading..."
        elif self.downloaded:
            where = "bundled with Tuneloom" if i.bundled else "downloaded"
            status = theme.span("In use", "ok", pal, bold=True) + f" · {where}" if self.selected else where.capitalize()
            self.primary.setText("In use" if self.selected else "Use this model")
            self.primary.setEnabled(not self.selected)
        elif self.state == "paused" or i.partial_bytes:
            status = f"Paused: {fmt_bytes(i.partial_bytes)} downloaded so far; Resume continues from there."
            self.primary.setText("Resume download")
            if i.download_bytes:
                self.progress.setValue(int(1000 * min(1.0, i.partial_bytes / i.download_bytes)))
                self.progress.setFormat(f"{fmt_bytes(i.partial_bytes)} of about {fmt_bytes(i.download_bytes)}")
            self.progress.setVisible(True)
        else:
            status = f"<span style='color:{muted}'>Not downloaded</span>"
            self.primary.setText("Download")
        if self.state == "failed" and self.message:
            status = theme.span(html.escape(self.message).replace("\n", "<br>"), "error", pal)
            if not self.downloaded:
                self.primary.setText("Try again")
        self.status.setText(status)
        self.border_role = "highlight" if self.selected else "soft"
        self.border_width = 2.0 if self.selected else 1.0
        self.update()


class ModelPage(Page):
    """Step 1: the catalog, downloads, and the model in use (checked off the GUI thread)."""

    key = "model"
    title = "1. Choose a model"
    blurb = ("The model you will teach. The bundled demo model works offline and trains in about a minute; "
             "the others download once from Hugging Face.")

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        self.cards: dict[str, ModelCard] = {}
        lay = self.layout_

        box, self.current = panel_label("No model chosen yet.", "CurrentModel")
        lay.addWidget(box)
        row = QHBoxLayout()
        self.demo_btn = QPushButton("Use the bundled demo model")
        self.add_btn = QPushButton("Add by Hugging Face id...")
        self.open_btn = QPushButton("Open local model folder...")
        self.open_btn.setToolTip("A folder with config.json, tokenizer files and *.safetensors. "
                                 "You can also drop the folder on the window.")
        for b in (self.demo_btn, self.add_btn, self.open_btn):
            row.addWidget(b)
        row.addStretch(1)
        lay.addLayout(row)

        self.grid_host = QWidget()
        self.grid = QGridLayout(self.grid_host)
        self.grid.setSpacing(10)
        self.grid.setContentsMargins(0, 4, 8, 4)
        self.loading = QLabel("Loading the model catalog...")
        self.grid.addWidget(self.loading, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.grid_host)
        self.scroll = scroll
        lay.addWidget(scroll, 1)

        self.demo_btn.clicked.connect(self.use_demo_model)
        self.add_btn.clicked.connect(self.ask_hub_id)
        self.open_btn.clicked.connect(self._open)
        self._last_check = None

    def changeEvent(self, event):
        # the texts carry colours picked for the appearance: pick again
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange) and self._last_check:
            self.show_check(*self._last_check)
        super().changeEvent(event)

    # -- catalog
    def load_catalog(self):
        custom = self.custom_ids()
        self.slots["catalog"].start(catalog_cards, custom, on_ok=self._catalog_loaded, on_failed=lambda exc: (
            self.loading.setText("The model catalog cannot be read: " + error_text(exc))))

    def custom_ids(self) -> list[str]:
        v = self.settings.value("models/custom", [])
        return [v] if isinstance(v, str) else list(v or [])

    def _catalog_loaded(self, cards: list[CardInfo]):
        self.loading.hide()
        for info in cards:
            self._add_card(info)
        self.mark_selected(self.session.model_dir)

    def _add_card(self, info: CardInfo) -> ModelCard:
        card = ModelCard(info)
        card.primary_clicked.connect(self._primary)
        card.cancel_clicked.connect(self.cancel_download)
        n = len(self.cards)
        self.grid.addWidget(card, n // 2, n % 2)
        self.grid.setRowStretch(n // 2 + 1, 1)
        self.cards[info.key] = card
        return card

    def card_for_path(self, path: Path | None) -> ModelCard | None:
        if path is None:
            return None
        p = Path(path).resolve()
        for c in self.cards.values():
            if c.info.path is not None and Path(c.info.path).resolve() == p:
                return c
        return None

    def mark_selected(self, path: Path | None):
        chosen = self.card_for_path(path)
        for c in self.cards.values():
            if c.selected != (c is chosen):
                c.set_selected(c is chosen)

    def _primary(self, card: ModelCard):
        if card.downloaded:
            self.set_model(card.info.path, card.info.name)
        else:
            self.download(card)

    # -- downloads
    def download(self, card: ModelCard):
        slot = self.slots[f"download:{card.info.key}"]
        if slot.running:
            return
        card.start_download()
        slot.start(fetch_card, card.info, on_progress=card.download_progress,
                   on_ok=lambda res, c=card: self._downloaded(c, res),
                   on_failed=lambda exc, c=card: self._download_failed(c, exc), on_ended=self._downloads_changed)
        self._downloads_changed()

    def _downloads_changed(self):
        self.session.update(downloading=tuple(self.downloading()))

    def cancel_download(self, card: ModelCard):
        slot = self.slots[f"download:{card.info.key}"]
        if slot.running:
            card.detail.setText("Stopping...")
            slot.stop()

    def _downloaded(self, card: ModelCard, res):
        problems = []
        if res.check is not None and not res.check.ok:
            problems = ["This model cannot be used: " + p.message + (f" {p.hint}" if p.hint else "")
                        for p in res.check.problems]
        card.download_done(res.path, problems)
        self.ctx.status(res.message or f"{card.info.name} is ready", 8000)
        if card.info.entry is None and not problems:  # added by id: the user wants this one
            self.set_model(res.path, card.info.name)

    def _download_failed(self, card: ModelCard, exc):
        if isinstance(exc, Cancelled):
            kept = (exc.result or {}).get("partial_bytes", 0) if isinstance(exc.result, dict) else 0
            from app.gui.jobs import partial_download_bytes

            kept = max(kept, partial_download_bytes(card.info.hub_id))
            card.download_stopped(kept, str(exc))
        else:
            card.download_failed(error_text(exc))

    def downloading(self) -> list[str]:
        return [k.split(":", 1)[1] for k, slot in self.slots.items() if k.startswith("download:") and slot.running]

    # -- other sources
    def ask_hub_id(self):
        text, ok = QInputDialog.getText(self, "Add a model by Hugging Face id",
                                        "Model id (organisation/name), for example Qwen/Qwen2.5-0.5B-Instruct:")
        if ok and text.strip():
            self.add_hub_id(text.strip())

    def add_hub_id(self, hub_id: str) -> ModelCard | None:
        hub_id = hub_id.strip().strip("/")
        if hub_id.startswith("https://huggingface.co/"):
            hub_id = hub_id[len("https://huggingface.co/"):].strip("/")
        if not HUB_ID_RE.match(hub_id):
            QMessageBox.warning(self, "Tuneloom", f"“{hub_id}” is not a Hugging Face model id.\n\n"
                                "An id looks like organisation/name, for example Qwen/Qwen2.5-0.5B-Instruct.")
            return None
        card = next((c for c in self.cards.values() if c.info.hub_id and c.info.hub_id.lower() == hub_id.lower()), None)
        if card is None:
            card = self._add_card(card_for_hub_id(hub_id))
            custom = self.custom_ids()
            if hub_id not in custom:
                self.settings.setValue("models/custom", custom + [hub_id])
        QTimer.singleShot(0, lambda: self.scroll.ensureWidgetVisible(card))
        if card.downloaded:
            self.set_model(card.info.path, card.info.name)
        else:
            self.download(card)
        return card

    def _open(self):
        d = QFileDialog.getExistingDirectory(self, "Open a model folder", self.settings.value("models/dir", ""))
        if d:
            self.settings.setValue("models/dir", str(Path(d).parent))
            self.set_model(Path(d))

    # -- the chosen model
    def show_checking(self, path: Path, name: str | None):
        self.current.setText(f"Checking <b>{html.escape(name or Path(path).name)}</b>...")

    def show_check(self, check, name: str | None, in_use: Path | None):
        """The result of validating a model folder: what it is, or every problem in plain words."""
        self._last_check = (check, name, in_use)
        pal = self.palette()
        title = html.escape(name or check.path.name)
        if check.ok:
            facts = [check.architecture or check.model_type or "?"]
            if check.quantization:
                facts.append(f"{check.quantization['bits']}-bit quantized")
            elif check.dtype:
                facts.append(check.dtype)
            facts.append(f"{fmt_bytes(check.weight_bytes)} of weights")
            source = getattr(check, "chat_template_source", None)  # where the template is (core.hub)
            if check.has_chat_template:
                facts.append(f"chat template from {source}" if source else "chat template: yes")
            else:
                facts.append(f"base model: chat data uses the {check.fallback_template} template")
            text = (theme.span("In use:", "ok", pal, bold=True) + f" <b>{title}</b> · " + " · ".join(
                html.escape(f) for f in facts) + f"<br><span style='color:{theme.muted(pal).name()}'>"
                f"{html.escape(str(check.path))}</span>")
            for n in check.notes:
                text += "<br>" + html.escape(n)
        else:
            text = theme.span(f"{title} cannot be used:", "error", pal, bold=True) + "<ul style='margin:0'>"
            for p in check.problems:
                text += f"<li>{html.escape(p.message)}" + (f" <i>{html.escape(p.hint)}</i>" if p.hint else "") + "</li>"
            text += "</ul>"
            if in_use is not None:
                s = self.session
                name = s.model_name if s.model_name and s.model_dir is not None and Path(s.model_dir) == \
                    Path(in_use) else in_use.name
                text += f"The model in use is still <b>{html.escape(name)}</b> " \
                        f"<span style='color:{theme.muted(pal).name()}'>({html.escape(str(in_use))})</span>."
        self.current.setText(text)
        self.mark_selected(in_use)

    def show_check_error(self, path: Path, message: str):
        self.current.setText(theme.span(f"{html.escape(Path(path).name)} cannot be checked:", "error",
                                        self.palette(), bold=True) + " " + html.escape(message))

    # -- the controller: which model is in use
    def use_demo_model(self):
        self.set_model(paths.demo_model_dir(), DEMO_NAME)

    def restore_model(self):
        """The model of the last session, else the bundled demo model."""
        saved = self.settings.value("model")
        if saved and Path(saved).is_dir():
            self.set_model(Path(saved), self.settings.value("model_name") or None)
        else:
            self.use_demo_model()

    def set_model(self, model_dir: Path, name: str | None = None):
        """Check ``model_dir`` (off the GUI thread) and use it if it passes."""
        model_dir = Path(model_dir)
        if name is None:
            card = self.card_for_path(model_dir)
            name = card.info.name if card else (DEMO_NAME if model_dir == paths.demo_model_dir() else model_dir.name)
        self.session.update(model_checking=model_dir)
        self.show_checking(model_dir, name)
        self.slots["check"].start(gj.check_model, model_dir,
                                  on_ok=lambda check: self._model_checked(model_dir, name, check),
                                  on_failed=lambda exc: self.show_check_error(model_dir, error_text(exc)),
                                  on_ended=lambda: self.session.update(model_checking=None))

    def _model_checked(self, model_dir: Path, name: str, check):
        if check.ok:
            self.settings.setValue("model", str(model_dir))
            self.settings.setValue("model_name", name)
            self.ctx.status(f"Using {name}", 5000)
            self.session.update(model_dir=model_dir, model_name=name, model_check=check)
        self.show_check(check, name, self.session.model_dir)
