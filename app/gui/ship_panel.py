"""The Export page's choice of what to export (merged / adapter), its other targets and the Share section.

A widget of its own (the page adds it below its Ollama form): "Merged (one file)" or "Adapter (small,
shares the base)" for the Ollama/GGUF export, then LM Studio, an MLX folder and a PEFT folder, each with
its size and a line saying what it is for, and Share (push to the Hugging Face Hub). The work is done by
core (export_adapter, lmstudio, mlx_export, peft_export, hub_push) in job slots; this only shows state.
"""
from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (QCheckBox, QComboBox, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QProgressBar, QPushButton, QVBoxLayout, QWidget)

from core import runs

KINDS = [("merged", "Merged (one file)"), ("adapter", "Adapter (small, shares the base)")]
TARGETS = [
    ("lmstudio", "Open in LM Studio", "The merged GGUF in LM Studio's models folder; its chat uses the training prompt."),
    ("mlx", "Save MLX folder", "The merged model for mlx-lm and LM Studio's MLX engine on a Mac, plus the adapter."),
    ("peft", "Save PEFT folder", "The adapter for transformers, PEFT and vLLM, with a model card (README.md)."),
]


def _size(n: int | None) -> str:
    if not n:
        return ""
    from core.units import fmt_bytes

    return fmt_bytes(n)


def target_dir(run_dir: Path, what: str, bits: int = 16) -> Path:
    return runs.RunFolder(run_dir).exports_dir / ({"mlx": f"mlx-{bits}", "peft": "peft"}[what])


def lmstudio_target(run_dir: Path, quant: str) -> Path:
    """Where "Open in LM Studio" places the run's GGUF (core.export.lmstudio.target_path)."""
    from core.export.pipeline import default_gguf_name
    from core.export.lmstudio import target_path

    return target_path(default_gguf_name(run_dir, quant), Path(run_dir).name)


def target_job(what, run_dir, quant, bits, events=None, cancel=None, force=False):
    """One of the other targets, written under the run's exports/ folder (LM Studio: its own folder; an
    existing file there is replaced only with ``force``, which the user asks for by ticking a box)."""
    if what == "lmstudio":
        from core.export.pipeline import default_gguf_name, export, write_export_record
        from core.export.lmstudio import place_gguf

        gguf = runs.RunFolder(run_dir).exports_dir / default_gguf_name(run_dir, quant)
        if not gguf.is_file():
            res = export(run_dir, gguf=gguf, quant=quant, modelfile=gguf.with_name("Modelfile"), events=events,
                         cancel=cancel)
            write_export_record(run_dir, res)
        placed = place_gguf(gguf, Path(run_dir).name, events=events, force=force)
        return {"what": what, "path": placed["path"], "note": f"placed by {placed['method']}"}
    if what == "mlx":
        from core.export.mlx import export_mlx

        res = export_mlx(run_dir, target_dir(run_dir, "mlx", bits), bits=bits, events=events, cancel=cancel)
        return {"what": what, "path": res["path"], "note": "merged/ and adapter/"}
    from core.export.peft import export_peft

    res = export_peft(run_dir, target_dir(run_dir, "peft"), events=events, cancel=cancel)
    return {"what": what, "path": res["path"], "note": f"r={res['r']}, lora_alpha={res['lora_alpha']:g}"}


def push_job(run_dir, repo, what, private, token, events=None, cancel=None):
    from core.export.hub_push import push

    return push(run_dir, repo, what=what, private=private, token=token or None, events=events, cancel=cancel)


def sizes_for(run_dir: Path, quant: str, bits: int) -> dict:
    """Bytes each choice writes, from safetensors headers (milliseconds): merged GGUF, adapter GGUF, the base GGUF
    (0 when already exported), MLX folder, PEFT folder; and why the adapter cannot be exported, if so."""
    from core.export.pipeline import estimate_export_bytes, resolve_source
    from core.export.adapter import base_gguf_path, estimate_adapter_bytes, exact_adapter_reason
    from core.export.mlx import estimate_mlx_bytes
    from core.model_folder import run_thinking

    base, run = resolve_source(run_dir)
    gguf = estimate_export_bytes(base, quant, fuse=False)["gguf"]
    adapter = estimate_adapter_bytes(run)
    base_done = base_gguf_path(base, quant, thinking=run_thinking(run)).is_file()
    return {"merged": gguf, "adapter": adapter, "base": 0 if base_done else gguf, "lmstudio": gguf,
            "mlx": estimate_mlx_bytes(base, bits), "peft": adapter, "adapter_problem": exact_adapter_reason(run)}


class ShipPanel(QWidget):
    def __init__(self, page):
        super().__init__()
        self.page = page
        self.setObjectName("export.ship")
        self._sizes: dict = {}
        self._paths: dict[str, str] = {}
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)

        self._build_kind()
        self._build_targets(lay)
        self._build_share(lay)

        self.push_btn.clicked.connect(self.push)
        self.push_cancel.clicked.connect(lambda: self.page.slots["share"].stop())
        self.repo.textChanged.connect(lambda _t: self.refresh())
        self.kind.currentIndexChanged.connect(lambda _i: self.refresh())
        self.bits.currentIndexChanged.connect(lambda _i: self.update_sizes())
        for c in self.what.values():
            c.toggled.connect(lambda _on: self.refresh())

    def _build_kind(self) -> None:
        """The merged/adapter choice and its note, in ``kind_box`` (the page puts it in its form)."""
        # the merged/adapter choice: a row of its own that the page puts in its form, next to the type
        self.kind_box = QWidget()
        kind_row = QHBoxLayout(self.kind_box)
        kind_row.setContentsMargins(0, 0, 0, 0)
        self.kind = QComboBox()
        self.kind.setObjectName("export.kind")
        for key, label in KINDS:
            self.kind.addItem(label, key)
        self.kind.setToolTip("Merged: the whole fine-tuned model in one GGUF. Adapter: only what training changed "
                             "(a few MB); the base model is written once and shared by every adapter of it.")
        self.kind_note = QLabel("")
        self.kind_note.setObjectName("export.kind_note")
        self.kind_note.setWordWrap(True)
        kind_row.addWidget(self.kind)
        kind_row.addWidget(self.kind_note, 1)

    def _build_targets(self, lay) -> None:
        """The Other places box: a button, its size and a note per target, the MLX bits, Replace, the result."""
        box = QGroupBox("Other places")
        grid = QGridLayout(box)
        self.buttons: dict[str, QPushButton] = {}
        self.size_labels: dict[str, QLabel] = {}
        self.bits = QComboBox()
        self.bits.setObjectName("export.mlx_bits")
        for b, label in ((16, "float16"), (8, "8-bit"), (4, "4-bit")):
            self.bits.addItem(label, b)
        for i, (key, label, why) in enumerate(TARGETS):
            b = QPushButton(label)
            b.setObjectName(f"export.{key}")
            size = QLabel("")
            size.setObjectName(f"export.size.{key}")
            note = QLabel(why)
            note.setWordWrap(True)
            grid.addWidget(b, i, 0)
            grid.addWidget(size, i, 1)
            grid.addWidget(note, i, 3)
            self.buttons[key] = b
            self.size_labels[key] = size
            b.clicked.connect(lambda _c=False, k=key: self.start_target(k))
        grid.addWidget(self.bits, 1, 2)
        grid.setColumnStretch(3, 1)
        # LM Studio's file is outside the run's exports/ folder: one there is replaced only when the user says so
        self.replace = QCheckBox("Replace the existing file")
        self.replace.setObjectName("export.replace")
        self.replace.setVisible(False)
        self.replace.toggled.connect(lambda _on: self.refresh())
        grid.addWidget(self.replace, len(TARGETS), 0, 1, 4)
        self.target_result = QLabel("")
        self.target_result.setObjectName("export.target_result")
        self.target_result.setWordWrap(True)
        self.target_result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        grid.addWidget(self.target_result, len(TARGETS) + 1, 0, 1, 4)
        lay.addWidget(box)

    def _build_share(self, lay) -> None:
        """The Share on the Hugging Face Hub box: repository, what to upload, token, Push / Cancel, progress, link."""
        share = QGroupBox("Share on the Hugging Face Hub")
        sl = QGridLayout(share)
        self.repo = QLineEdit()
        self.repo.setObjectName("export.share.repo")
        self.repo.setPlaceholderText("your-name/my-fine-tune")
        self.what = {}
        what_row = QHBoxLayout()
        for key, label in (("adapter", "Adapter (PEFT)"), ("merged", "Merged model"), ("gguf", "GGUF")):
            c = QCheckBox(label)
            c.setObjectName(f"export.share.what.{key}")
            c.setChecked(key == "adapter")
            self.what[key] = c
            what_row.addWidget(c)
        self.private = QCheckBox("Private")
        self.private.setObjectName("export.share.private")
        self.private.setChecked(True)
        what_row.addWidget(self.private)
        what_row.addStretch(1)
        self.token = QLineEdit()
        self.token.setObjectName("export.share.token")
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("empty: the token `hf auth login` stored; a pasted one is used for this push "
                                      "only, never saved")
        self.push_btn = QPushButton("Push")
        self.push_btn.setObjectName("export.share.push")
        self.push_cancel = QPushButton("Cancel")
        self.push_cancel.setObjectName("export.share.cancel")
        self.push_cancel.setEnabled(False)
        self.push_progress = QProgressBar()
        self.push_progress.setObjectName("export.share.progress")
        self.push_progress.setMaximum(1000)
        self.push_progress.setValue(0)
        self.link = QLabel("")
        self.link.setObjectName("export.share.link")
        self.link.setWordWrap(True)
        self.link.setOpenExternalLinks(True)
        self.link.setTextFormat(Qt.TextFormat.RichText)
        sl.addWidget(QLabel("Repository"), 0, 0)
        sl.addWidget(self.repo, 0, 1)
        sl.addWidget(QLabel("Upload"), 1, 0)
        sl.addLayout(what_row, 1, 1)
        sl.addWidget(QLabel("Token"), 2, 0)
        sl.addWidget(self.token, 2, 1)
        pr = QHBoxLayout()
        pr.addWidget(self.push_btn)
        pr.addWidget(self.push_cancel)
        pr.addWidget(self.push_progress, 1)
        sl.addLayout(pr, 3, 1)
        sl.addWidget(self.link, 4, 1)
        lay.addWidget(share)

    # -- state ---------------------------------------------------------------------------------
    def adapter_only(self) -> bool:
        return self.kind.currentData() == "adapter"

    def update_sizes(self):
        run = self.page.session.run_dir
        self._sizes = {}
        if run is not None and self.page.session.trained:
            try:
                self._sizes = sizes_for(run, self.page.quant.currentData(), int(self.bits.currentData()))
            except Exception:  # noqa: BLE001 - a broken run shows its problem when exported
                self._sizes = {}
        s = self._sizes
        self.kind.setItemText(0, f"Merged (one file)  ·  {_size(s.get('merged'))}" if s.get("merged")
                              else "Merged (one file)")
        if s.get("adapter"):
            extra = (f" + base {_size(s['base'])} once" if s.get("base") else " (base already exported)")
            self.kind.setItemText(1, f"Adapter (small, shares the base)  ·  {_size(s['adapter'])}{extra}")
        else:
            self.kind.setItemText(1, "Adapter (small, shares the base)")
        for key in self.size_labels:
            self.size_labels[key].setText(_size(s.get(key)) and f"about {_size(s.get(key))}")
        self.refresh()

    def refresh(self):
        problem = self._sizes.get("adapter_problem")
        item = self.kind.model().item(1)
        item.setEnabled(problem is None)
        if problem and self.adapter_only():
            self.kind.setCurrentIndex(0)
        if problem:
            self.kind_note.setText("Adapter export is not exact for this run: " + problem.split(". ")[0] +
                                   ". Use the merged export.")
        elif self.adapter_only():
            self.kind_note.setText("Ollama gets the base model once and this adapter on top (FROM + ADAPTER); "
                                   "llama.cpp gives the same logits as the merged file.")
        else:
            self.kind_note.setText("The fine-tune merged into the model: one file for Ollama, llama.cpp, LM Studio.")
        trained = self.page.session.trained
        busy = self.page.slots.running("ship")
        writer = self.page.writer_why() if trained else None  # another process trains the run: no second writer
        existing = self.existing_lmstudio()
        self.replace.setVisible(existing is not None)
        if existing is not None:
            self.replace.setToolTip(f"LM Studio already has {existing}: tick to replace it with this run's GGUF.")
        elif self.replace.isChecked():
            self.replace.setChecked(False)  # asked for one file; another one later is asked about again
        for key, b in self.buttons.items():
            b.setEnabled(trained and not busy and writer is None and
                         not (key == "peft" and problem and "QLoRA" in problem))
            b.setToolTip(writer or dict((k, w) for k, _l, w in TARGETS)[key])
        sharing = self.page.slots.running("share")
        repo = self.repo.text().strip()
        ok_repo = repo.count("/") == 1 and all(repo.split("/"))
        self.push_btn.setEnabled(trained and not sharing and ok_repo and any(c.isChecked() for c in self.what.values()))
        self.push_btn.setToolTip("" if ok_repo else "Give the repository as OWNER/NAME.")
        self.push_cancel.setEnabled(sharing)

    # -- targets -------------------------------------------------------------------------------
    def existing_lmstudio(self) -> Path | None:
        """LM Studio's file for the current run and size when it is there already (an earlier export)."""
        run = self.page.session.run_dir
        if run is None or not self.page.session.trained:
            return None
        try:
            p = lmstudio_target(run, self.page.quant.currentData())
        except Exception:  # noqa: BLE001 - a damaged run: nothing to place
            return None
        return p if p.exists() else None

    def start_target(self, key: str):
        run = self.page.session.run_dir
        if run is None:
            return
        force = False
        if key == "lmstudio" and self.existing_lmstudio() is not None:
            if not self.replace.isChecked():  # asked inline, before anything is written
                self.refresh()
                self.target_result.setText(f"LM Studio already has {html.escape(str(self.existing_lmstudio()))}. "
                                           "Tick <b>Replace the existing file</b> to replace it, or export another "
                                           "size.")
                return
            force = True
        self.target_result.setText(f"Writing {dict((k, l) for k, l, _w in TARGETS)[key].lower()}...")
        self.page.slots["ship"].start(target_job, key, run, self.page.quant.currentData(),
                                      int(self.bits.currentData()), force=force, on_ok=self._target_done,
                                      on_failed=self._target_failed, on_ended=self.refresh)
        self.refresh()

    def _target_done(self, res: dict):
        self._paths[res["what"]] = res["path"]
        self.target_result.setText(f"<b>{html.escape(res['what'])}:</b> {html.escape(res['path'])} "
                                   f"({html.escape(res.get('note', ''))})")

    def _target_failed(self, exc):
        from app.gui.pages.base import error_text

        self.target_result.setText("Not written: " + html.escape(error_text(exc)).replace("\n", "<br>"))

    # -- share ---------------------------------------------------------------------------------
    def push(self):
        run = self.page.session.run_dir
        if run is None:
            return
        what = [k for k, c in self.what.items() if c.isChecked()]
        self.link.setText("Preparing the upload...")
        self.push_progress.setValue(0)
        token = self.token.text().strip()
        self.page.slots["share"].start(push_job, run, self.repo.text().strip(), what, self.private.isChecked(), token,
                                       on_progress=self._push_progress, on_ok=self._pushed,
                                       on_failed=self._push_failed, on_ended=self.refresh)
        self.refresh()

    def _push_progress(self, done, total, what):
        if total:
            self.push_progress.setValue(int(1000 * float(done or 0) / float(total)))
        self.link.setText(html.escape(str(what)))

    def _pushed(self, res: dict):
        self.push_progress.setValue(1000)
        url = html.escape(res["url"])
        self.link.setText(f"Pushed {len(res['files'])} file(s) to <a href='{url}'>{url}</a>")

    def _push_failed(self, exc):
        from app.gui.pages.base import error_text
        from core.events import Cancelled

        if isinstance(exc, Cancelled):
            self.link.setText("Cancelled: nothing was committed to the repository.")
        else:
            self.link.setText("Not pushed: " + html.escape(error_text(exc)).replace("\n", "<br>"))

    def open_path(self, key: str):
        p = self._paths.get(key)
        if p:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(p).parent)))
