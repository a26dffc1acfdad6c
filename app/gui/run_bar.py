"""The current run, named at the top of the pages that act on it (Train, Try, Export).

There is one current run (``Session.run_dir``): the run Train shows, Try asks and Export writes. Ticking runs
in the history to compare them never changes it; a click on a run (in the history or the sidebar) does.
"""
from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSizePolicy

from app.gui import theme
from app.gui.widgets import Panel
from core import paths, runs

HISTORY_PAGE = 5  # the window's page index of the run history (after the five steps)

STATE_WORDS = {"done": "done", "running": "training", "cancelled": "stopped, resumable", "failed": "failed",
               "interrupted": "interrupted, resumable", "new": "not started", "unknown": "?", "damaged": "damaged"}


def state_words(info, session=None) -> str:
    """A run's state in words; a run this window has paused is "paused", not "training"."""
    st = info.state
    if session is not None and session.job("train") == "paused" and session.run_dir is not None and \
            Path(session.run_dir) == Path(info.path):
        return "paused"
    if st in ("cancelled", "interrupted", "failed") and not info.resumable:
        return {"cancelled": "stopped", "interrupted": "interrupted", "failed": "failed"}[st]
    if st == "failed" and info.resumable:
        return "failed, resumable"
    return STATE_WORDS.get(st, st)


def other_writer(run_dir, session=None) -> int | None:
    """The pid of another process writing ``run_dir`` now (its OS lock, core.runs.lock_holder; 0 when the lock
    file does not say), or None. This window's own training (its trainer process holds the lock of the current
    run) is not another writer."""
    if run_dir is None:
        return None
    pid = runs.lock_holder(Path(run_dir))
    if pid is None:
        return None
    if session is not None and session.busy("train") and session.run_dir is not None and \
            Path(session.run_dir) == Path(run_dir):
        return None
    return pid


def writer_words(pid: int) -> str:
    """'process 1234 is training this run' (the words of a disabled action's tooltip)."""
    who = f"process {pid}" if pid else "another process"
    return f"{who} is training this run (another window, or `tuneloom train`); wait until it has finished"


def run_problems(info) -> list[str]:
    """What is wrong with a run folder, in words: the damage core.runs found (an unreadable config.json,
    status.json, ...), and the parts the actions need that are missing (a finished run without its adapter)."""
    out = [p for p in str(getattr(info, "problem", "") or "").split("; ") if p]
    if not out and info.state == "done" and info.adapters is None:
        out.append(f"its adapter ({runs.FINAL_ADAPTERS}) is missing: Try and Export need it")
    return out


def model_words(path: str) -> str:
    if not path:
        return "?"
    p = Path(path)
    if p == paths.demo_model_dir():
        return "demo model"
    # hub cache snapshots: models--org--name/snapshots/<rev>
    for part in p.parts:
        if part.startswith("models--"):
            return part[len("models--"):].replace("--", "/")
    return p.name


def data_words(files: list[str]) -> str:
    if not files:
        return "?"
    names = [Path(f).name for f in files]
    if Path(files[0]) == paths.demo_data_dir():
        return "sample dataset"
    return names[0] + (f" +{len(names) - 1}" if len(names) > 1 else "")


def checkpoint_step(info) -> int | None:
    """The step a resume continues from: the last checkpoint's."""
    ck = info.checkpoint
    if ck is None:
        return None
    try:
        return int(ck.name.split("-")[1])
    except (IndexError, ValueError):
        return None


# the step a run training in this window has reached (the Train page's reports; the files on disk lag behind
# until the next checkpoint): run folder -> (step, total)
LIVE_STEPS: dict[str, tuple[int, int]] = {}


def run_line(info, session=None) -> str:
    """'<b>title</b> · done · 600 of 600 steps · Qwen2.5-0.5B' (rich text)."""
    parts = [f"<b>{html.escape(info.title)}</b>", html.escape(state_words(info, session))]
    steps, total = info.steps, info.total_steps
    live = LIVE_STEPS.get(str(info.path))
    if live is not None and live[0] >= steps:
        steps, total = live[0], live[1] or total
    parts.append(f"{steps:,} of {total:,} steps" if total else f"{steps:,} steps")
    if info.base_model:
        parts.append(html.escape(model_words(info.base_model)))
    return " · ".join(parts)


class RunBar(Panel):
    """'Run: <title> · state · steps · model' and a button to the history to pick another."""

    def __init__(self, ctx, prefix: str, what: str):
        super().__init__()
        self.ctx = ctx
        self.session = ctx.session
        self.what = what  # what the page does with the run, e.g. "Try asks its fine-tuned model"
        self.setObjectName(f"{prefix}.run_bar")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(10, 4, 6, 4)
        self.label = QLabel()
        self.label.setObjectName(f"{prefix}.current_run")
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setWordWrap(True)
        self.label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.change = QPushButton("Other runs...")
        self.change.setObjectName(f"{prefix}.change_run")
        self.change.setToolTip("Open the run history: a click on a run makes it the current one.")
        self.change.clicked.connect(lambda: ctx.go_to(HISTORY_PAGE))
        lay.addWidget(self.label, 1)
        lay.addWidget(self.change, 0, Qt.AlignmentFlag.AlignVCenter)
        self.session.changed.connect(self._session_changed)
        self.refresh()

    def showEvent(self, event):
        super().showEvent(event)
        self.refresh()  # a page opened during a run: the step reached now, not when the page last heard of it

    def _session_changed(self, names: set):
        if names & {"run_dir", "run_version", "jobs"}:
            self.refresh()

    def refresh(self):
        rd = self.session.run_dir
        muted = theme.muted(self.palette()).name()
        if rd is None:
            self.label.setText(f"<b>Run:</b> none yet <span style='color:{muted}'>(train one in step 3, or pick "
                               "one in the history)</span>")
            self.setToolTip("")
            return
        info = runs.RunInfo.load(rd)
        if info is None:
            self.label.setText(f"<b>Run:</b> {html.escape(Path(rd).name)} "
                               f"<span style='color:{muted}'>(its folder is gone)</span>")
            return
        self.label.setText(f"<b>Run:</b> {run_line(info, self.session)}")
        self.setToolTip(f"{self.what}: {info.path}")
