"""Run history, read from disk: every run folder (GUI and CLI alike) with its curve, config and state.

Open a run (its full curve and config), resume it, try or export it, rename it, move it to the
trash, or tick several and overlay their curves.
"""
from __future__ import annotations

import html
import json
import os
import shutil
import time
from pathlib import Path

from PySide6.QtCore import QFile, QFileSystemWatcher, QRect, Qt, QTimer, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QListWidget, QListWidgetItem,
                               QMenu, QMessageBox, QPlainTextEdit, QPushButton, QSplitter, QStyle, QStyleOptionViewItem,
                               QTabWidget, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from app.gui import jobs as gj
from app.gui import theme
from app.gui.pages.base import AppContext, Page, error_text
from app.gui.notify import show_in_folder
from app.gui.plots import ComparePlot, sparkline
from app.gui.run_bar import (STATE_WORDS, checkpoint_step, data_words, model_words, other_writer,  # noqa: F401
                             run_problems, state_words, writer_words)
from app.session import EXPORT, TRY
from core import paths, runs

PATH_ROLE = Qt.ItemDataRole.UserRole
ERROR_ROLE = int(Qt.ItemDataRole.UserRole) + 1  # a Status cell drawn in the error colour (a failed or damaged run)
COLUMNS = ["Run", "Date", "Base model", "Dataset", "Status", "Steps", "Train loss", "Valid loss", "Curve"]
def runs_best_name() -> str:
    from core.runs import BEST_ADAPTERS

    return BEST_ADAPTERS


def _loss(v) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"


class RunItem(QTreeWidgetItem):
    """A history row. ``text()`` and ``data(role)`` also work without a column (as for a list item)."""

    def text(self, column: int = 0) -> str:  # noqa: D401
        return super().text(column)

    def data(self, column, role=None):
        if role is None:  # data(role), as QListWidgetItem has it
            return super().data(0, column)
        return super().data(column, role)


class RunTree(QTreeWidget):
    """The history list: one row per run folder; ``count()`` and ``item(i)`` as a list widget has them.

    A click on a row's check box ticks it for comparing and does nothing else: the current run (what Try and
    Export act on) changes only on a click elsewhere in the row."""

    def count(self) -> int:
        return self.topLevelItemCount()

    def item(self, i: int):
        return self.topLevelItem(i)

    def check_rect(self, item) -> QRect:
        """Where ``item``'s check box is drawn, in viewport coordinates."""
        index = self.indexFromItem(item, 0)
        opt = QStyleOptionViewItem()
        self.initViewItemOption(opt)
        opt.rect = self.visualRect(index)
        opt.index = index
        opt.features |= QStyleOptionViewItem.ViewItemFeature.HasCheckIndicator
        opt.checkState = item.checkState(0)
        r = self.style().subElementRect(QStyle.SubElement.SE_ItemViewItemCheckIndicator, opt, self)
        return r.adjusted(-3, -3, 3, 3)  # a little slack around the box

    def mousePressEvent(self, event):
        pos = event.position().toPoint()
        item = self.itemAt(pos)
        if item is not None and event.button() == Qt.MouseButton.LeftButton and self.check_rect(item).contains(pos):
            ticked = item.checkState(0) == Qt.CheckState.Checked
            item.setCheckState(0, Qt.CheckState.Unchecked if ticked else Qt.CheckState.Checked)
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseReleaseEvent(self, event):
        item = self.itemAt(event.position().toPoint())
        if item is not None and event.button() == Qt.MouseButton.LeftButton and \
                self.check_rect(item).contains(event.position().toPoint()):
            event.accept()  # the press ticked it already
            return
        super().mouseReleaseEvent(event)


class HistoryPage(Page):
    key = "history"
    title = "Run history"
    blurb = ("Every training run on this computer, from the window and from <code>tuneloom train</code>. Click one to "
             "open it (Try and Export then use it); tick two or more to compare their curves.")

    summaries_changed = Signal(list)  # [gj.RunSummary], newest first

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        self.summaries: list[gj.RunSummary] = []
        self.opened = None  # the RunInfo shown below the list, with its metrics
        self._first_load = True  # the first listing restores the current run of the last session
        self._train_job = None  # the train job's state as last listed
        self._filling = False
        lay = self.layout_
        self.list = RunTree()
        self.list.setObjectName("history.list")
        self.list.setHeaderLabels(COLUMNS)
        self.list.setRootIsDecorated(False)
        self.list.setAlternatingRowColors(True)
        self.list.setUniformRowHeights(True)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.EditKeyPressed)
        self.list.setIconSize(sparkline([]).size())
        hdr = self.list.header()
        # every column as wide as its contents (a narrow window scrolls sideways rather than cutting the run's
        # name to "2026..."); the curve takes what is left
        for c in range(len(COLUMNS)):
            hdr.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        hdr.setStretchLastSection(True)
        self.list.setToolTip("Tick runs to overlay their curves; double-click or F2 renames.")

        buttons = QHBoxLayout()
        self.resume_btn = QPushButton("Resume")
        self.resume_btn.setObjectName("history.resume")
        self.try_btn = QPushButton("Try")
        self.try_btn.setObjectName("history.try")
        self.export_btn = QPushButton("Export")
        self.export_btn.setObjectName("history.export")
        self.rename_btn = QPushButton("Rename")
        self.rename_btn.setObjectName("history.rename")
        self.delete_btn = QPushButton("Move to Trash")
        self.delete_btn.setObjectName("history.delete")
        self.compare_label = QLabel("")
        for b in (self.resume_btn, self.try_btn, self.export_btn, self.rename_btn, self.delete_btn):
            buttons.addWidget(b)
        buttons.addWidget(self.compare_label, 1)
        self.empty = QLabel("No runs yet: train one in step 3, or with <code>tuneloom train</code>.")

        split = QSplitter(Qt.Orientation.Vertical)
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(self.list, 1)
        tl.addWidget(self.empty)
        tl.addLayout(buttons)
        split.addWidget(top)
        bottom = QSplitter(Qt.Orientation.Horizontal)
        self.plot = ComparePlot()
        bottom.addWidget(self.plot)
        side = QWidget()
        sl = QVBoxLayout(side)
        sl.setContentsMargins(6, 0, 0, 0)
        self.details = QLabel("")
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.config_view = QPlainTextEdit()
        self.config_view.setObjectName("history.config")
        self.config_view.setReadOnly(True)
        self.config_view.setAcceptDrops(False)
        sl.addWidget(self.details)
        # the run's report card (report.md) beside its settings
        self.report_view = QPlainTextEdit()
        self.report_view.setObjectName("history.report")
        self.report_view.setReadOnly(True)
        self.report_view.setAcceptDrops(False)
        self.side_tabs = QTabWidget()
        self.side_tabs.setObjectName("history.side_tabs")
        self.side_tabs.addTab(self.report_view, "Report card")
        self.side_tabs.addTab(self.config_view, "Settings")
        sl.addWidget(self.side_tabs, 1)
        bottom.addWidget(side)
        bottom.setStretchFactor(0, 3)
        bottom.setStretchFactor(1, 2)
        split.addWidget(bottom)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        lay.addWidget(split, 1)

        self.list.currentItemChanged.connect(lambda cur, _prev: cur is not None and self._picked(cur))
        self.list.itemClicked.connect(lambda it, _c=0: self._picked(it))
        self.list.itemChanged.connect(self._item_changed)
        self.list.itemDoubleClicked.connect(lambda it, c: self.list.editItem(it, 0))
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(
            lambda pos: self._menu_at(self.list.itemAt(pos), self.list.viewport().mapToGlobal(pos)))
        self.resume_btn.clicked.connect(self.resume_selected)
        self.try_btn.clicked.connect(lambda: self._use_selected(TRY))
        self.export_btn.clicked.connect(lambda: self._use_selected(EXPORT))
        self.rename_btn.clicked.connect(self.rename_selected)
        self.delete_btn.clicked.connect(self.delete_selected)
        self.slots["train"].state_changed.connect(lambda _s: self._refresh_buttons())

        # CLI runs appear without a restart: watch the runs folder
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(400)
        self._refresh_timer.timeout.connect(self.refresh)
        self.watcher = QFileSystemWatcher(self)
        self._watch()
        self.watcher.directoryChanged.connect(lambda _p: self._refresh_timer.start())
        self._refresh_buttons()

    def _watch(self):
        root = paths.runs_dir()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError:
            return
        if str(root) not in self.watcher.directories():
            old = self.watcher.directories()
            if old:
                self.watcher.removePaths(old)
            self.watcher.addPath(str(root))

    # -- loading
    def changeEvent(self, event):
        from PySide6.QtCore import QEvent

        if (event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange)
                and getattr(self, "list", None) is not None):
            colour = theme.accent("error", self.palette())  # a failed run's Status in this palette's red
            for i in range(self.list.topLevelItemCount()):
                item = self.list.topLevelItem(i)
                if item.data(4, ERROR_ROLE):
                    item.setForeground(4, colour)
        super().changeEvent(event)

    def refresh(self):
        self._watch()
        self.slots["history"].start(gj.load_history, on_ok=self._loaded,
                                    on_failed=lambda exc: self.details.setText(
                                        "The run history cannot be read: " + html.escape(error_text(exc))))

    def session_changed(self, names: set):
        if names & {"run_version", "run_dir"}:
            self._refresh_timer.start()
        if "run_dir" in names:
            self._select_current()
            # remembered at once (not only on quit): after a crash or a kill the window offers this run again
            rd = self.session.run_dir
            self.settings.setValue("run/current", str(rd) if rd is not None else "")
            self.settings.sync()
        if "jobs" in names and self.session.job("train") != self._train_job:  # a paused run is listed as paused
            self._train_job = self.session.job("train")
            self._restate_current()

    def _restate_current(self) -> None:
        """The current run's state words in its row, in place (no reload: this happens while training)."""
        rd = self.session.run_dir
        item = self.item_for(rd)
        s = next((s for s in self.summaries if rd is not None and s.info.path == Path(rd)), None)
        if item is None or s is None:
            return
        if self.session.busy("train") and s.info.state not in ("running",):
            s.info.status = {**s.info.status, "state": "running", "pid": os.getpid()}  # this window trains it
        self._filling = True
        try:
            item.setText(4, state_words(s.info, self.session))
        finally:
            self._filling = False

    def _restore_current(self, summaries: list) -> None:
        """After a restart: the run that was current when the window last ran is current again (Train shows
        it, with Resume and the step it continues from when it is unfinished; Try and Export act on it)."""
        if self.session.run_dir is not None:
            return
        saved = str(self.settings.value("run/current", "") or "")
        info = next((s.info for s in summaries if str(s.info.path) == saved), None) if saved else None
        if info is not None:
            self.select_run(info.path)
            if info.resumable:
                step = checkpoint_step(info)
                self.ctx.status(f"{info.title} did not finish ({state_words(info)}): Resume on the Train page "
                                f"continues it from step {step:,}.", 30000)

    def _loaded(self, summaries: list):
        ticked = set(self.ticked())
        self.summaries = summaries
        self._filling = True
        try:
            self.list.clear()
            pal = self.palette()
            for s in summaries:
                info = s.info
                problems = run_problems(info)
                words = state_words(info, self.session)
                if problems and info.state != "damaged":
                    words += ", damaged"  # e.g. done, but its adapter is gone
                pid = other_writer(info.path, self.session) if not problems else None
                if pid is not None:  # its lock says so, whatever its status.json says yet
                    words = f"training in process {pid}" if pid else "training elsewhere"
                item = RunItem([info.title, time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created)),
                                model_words(info.base_model), data_words(info.dataset), words,
                                f"{s.steps:,}" + (f" / {info.total_steps:,}" if info.total_steps else ""),
                                _loss(s.final_train), _loss(s.final_valid), ""])
                item.setData(0, PATH_ROLE, str(info.path))
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEditable)
                item.setCheckState(0, Qt.CheckState.Checked if str(info.path) in ticked else Qt.CheckState.Unchecked)
                item.setIcon(8, QIcon(sparkline(s.train[1], palette=pal)))
                tip = f"{info.path}\nmodel: {info.base_model}\ndata: {', '.join(info.dataset)}"
                if info.error:
                    tip += f"\nerror: {info.error}"
                for p in problems:
                    tip += f"\ndamaged: {p}"
                for c in range(len(COLUMNS)):
                    item.setToolTip(c, tip)
                if info.state == "failed" or problems:
                    item.setForeground(4, theme.accent("error", pal))
                    item.setData(4, ERROR_ROLE, True)  # recoloured when the palette changes
                self.list.addTopLevelItem(item)
        finally:
            self._filling = False
        self.empty.setVisible(not summaries)
        if self._first_load:
            self._first_load = False
            self._restore_current(summaries)
        self._select_current()
        self._show_plot()
        self.summaries_changed.emit(summaries)

    def item_for(self, run_dir: Path | str | None):
        if run_dir is None:
            return None
        key = str(Path(run_dir))
        for i in range(self.list.topLevelItemCount()):
            it = self.list.topLevelItem(i)
            if it.data(0, PATH_ROLE) == key:
                return it
        return None

    def _select_current(self):
        it = self.item_for(self.session.run_dir)
        if it is not None and self.list.currentItem() is not it:
            self._filling = True
            try:
                self.list.setCurrentItem(it)
            finally:
                self._filling = False
            self._open(Path(it.data(0, PATH_ROLE)))
        self._refresh_buttons()

    # -- picking a run
    def _picked(self, item):
        if self._filling or item is None:
            return
        self.select_run(Path(item.data(0, PATH_ROLE)))

    def select_run(self, run_dir: Path):
        """Make ``run_dir`` the current run (Try and Export act on it) and open it here."""
        run_dir = Path(run_dir)
        self.session.update(run_dir=run_dir)
        self.ctx.status(f"Selected run {run_dir.name}", 5000)
        # an adapter only fits the model it was trained on: Try and Export use that one
        model = runs.RunFolder(run_dir).config.get("model")  # a damaged config: {}, no model to switch to
        base = Path(model) if isinstance(model, str) and model else None
        current = self.session.model_dir.resolve() if self.session.model_dir is not None else None
        if base is not None and base.is_dir() and base.resolve() != current:
            self.ctx.page("model").set_model(base)
        self._open(run_dir)
        self._refresh_buttons()

    def _open(self, run_dir: Path):
        self.slots["history.open"].start(gj.load_run, run_dir, on_ok=self._opened)

    def _opened(self, info):
        self.opened = info
        if info is None:
            return
        self.config_view.setPlainText(json.dumps(info.config, indent=2, ensure_ascii=False))
        self.report_view.setPlainText(getattr(info, "report_md", None)
                                      or "No report card yet: it is written when training ends.")
        pal = self.palette()
        lines = [f"<b>{html.escape(info.title)}</b> · {html.escape(state_words(info, self.session))}",
                 f"<span style='color:{theme.muted(pal).name()}'>{html.escape(str(info.path))}</span>"]
        if info.adapters:
            lines.append(f"Adapter: {html.escape(info.adapters.name)}")
        if info.best_step is not None and info.best_adapters is not None:
            lines.append(f"Best adapter: step {info.best_step} ({runs_best_name()}; Try and Export use it)")
        ck = info.checkpoint
        if ck is not None and info.state != "done":
            lines.append(f"Checkpoint: {html.escape(ck.name)} (Resume continues from there)")
        for e in info.exports:
            extra = e.record.get("ollama") or e.record.get("ollama_name") or ""
            where = e.path.name if e.path.parent == info.folder.exports_dir else str(e.path)  # a CLI export elsewhere
            lines.append(f"Export: {html.escape(where)}" + (f" (Ollama: {html.escape(str(extra))})"
                                                                  if extra else ""))
        if info.error:
            lines.append(theme.span(html.escape(info.error), "error", pal))
        listed = next((s.info for s in self.summaries if s.info.path == info.path), None)
        for p in run_problems(info) or (run_problems(listed) if listed is not None else []):  # damaged, missing
            lines.append(theme.span("Damaged: " + html.escape(p), "error", pal))
        pid = other_writer(info.path, self.session)
        if pid is not None:
            lines.append(html.escape(writer_words(pid)[0].upper() + writer_words(pid)[1:]) + ".")
        self.details.setText("<br>".join(lines))
        self._show_plot()

    # -- compare
    def ticked(self) -> list[str]:
        out = []
        for i in range(self.list.topLevelItemCount()):
            it = self.list.topLevelItem(i)
            if it.checkState(0) == Qt.CheckState.Checked:
                out.append(it.data(0, PATH_ROLE))
        return out

    def set_ticked(self, run_dirs) -> None:
        want = {str(Path(p)) for p in run_dirs}
        for i in range(self.list.topLevelItemCount()):
            it = self.list.topLevelItem(i)
            it.setCheckState(0, Qt.CheckState.Checked if it.data(0, PATH_ROLE) in want else Qt.CheckState.Unchecked)

    def _item_changed(self, item, column):
        if self._filling or column != 0:
            return
        path = Path(item.data(0, PATH_ROLE))
        s = next((s for s in self.summaries if s.info.path == path), None)
        new = item.text(0).strip()
        if s is not None and new and new != s.info.title:
            runs.set_title(path, new)
            s.info.meta["title"] = new
            self.summaries_changed.emit(self.summaries)
        elif s is not None and not new:
            self._filling = True
            item.setText(0, s.info.title)
            self._filling = False
        self._show_plot()

    def _show_plot(self):
        ticked = self.ticked()
        by_path = {str(s.info.path): s for s in self.summaries}
        if len(ticked) >= 2:
            shown = [by_path[p] for p in ticked if p in by_path]
            self.plot.show_runs([(s.info.title, *s.train, *s.valid) for s in shown])
            self.compare_label.setText(f"Comparing {len(shown)} runs.")
            return
        self.compare_label.setText("Tick two or more runs to compare their curves." if self.summaries else "")
        info = self.opened
        if info is not None and info.metrics is not None:
            # smoothed as on the Train page (the raw loss of length-grouped batches zig-zags)
            self.plot.show_runs([(info.title, *runs.series(info.metrics, "train_loss"),
                                  *runs.series(info.metrics, "valid_loss"))], smoothing=0.9)
        else:
            self.plot.show_runs([])

    # -- actions
    def selected_info(self):
        it = self.list.currentItem()
        if it is None:
            return None
        path = it.data(0, PATH_ROLE)
        return next((s.info for s in self.summaries if str(s.info.path) == path), None)

    def actions(self, info) -> dict[str, tuple[bool, str]]:
        """{"resume" / "try" / "export": (enabled, tooltip)} for a run: a run another process is training gets
        no second writer (Resume, Export), a damaged run none of the actions that need its missing parts."""
        training = self.slots["train"].state != "idle"
        if info is None:
            return {k: (False, "Pick a run first.") for k in ("resume", "try", "export")}
        pid = other_writer(info.path, self.session)
        busy = writer_words(pid) + "." if pid is not None else None
        problems = run_problems(info)
        damaged = f"This run is damaged: {'; '.join(problems)}." if problems else None
        can_resume = info.state != "done" and info.checkpoint is not None and not training
        out = {"resume": (True, "Continue this run from its last checkpoint.") if can_resume else (False, (
            "This run is finished." if info.state == "done" else
            "A run is training: stop or finish it first." if training else "This run has no checkpoint yet."))}
        has_adapter = info.adapters is not None
        for key, what in (("try", "try it"), ("export", "export it")):
            out[key] = (True, f"Make this run the current one and {what}.") if has_adapter else (
                False, "Pick a run that has an adapter (a few steps trained) first.")
        for key in ("resume", "try", "export"):
            if damaged and (info.state == "damaged" or key != "resume"):
                out[key] = (False, damaged)  # a damaged config or status: nothing reads it as a run
        for key in ("resume", "export"):  # a second writer
            if busy:
                out[key] = (False, busy[0].upper() + busy[1:])
        return out

    def _refresh_buttons(self):
        info = self.selected_info()
        training = self.slots["train"].state != "idle"
        current_run = self.session.run_dir
        running_here = training and info is not None and current_run == info.path
        acts = self.actions(info)
        for b, key in ((self.resume_btn, "resume"), (self.try_btn, "try"), (self.export_btn, "export")):
            b.setEnabled(acts[key][0])
            b.setToolTip(acts[key][1])
        self.rename_btn.setEnabled(info is not None)
        self.delete_btn.setEnabled(info is not None and not running_here)
        self.delete_btn.setToolTip("Move this run's folder to the trash." if not running_here else
                                   "This run is training: stop it first.")

    # -- the right-click menu (the list and the sidebar's runs)
    def _menu_at(self, item, global_pos):
        if item is None:
            return
        menu = self.context_menu(Path(item.data(0, PATH_ROLE) if isinstance(item, QTreeWidgetItem)
                                      else item.data(PATH_ROLE)))
        if menu is not None:
            menu.popup(global_pos)

    def context_menu(self, run_dir: Path) -> QMenu | None:
        """The history's actions for one run: make it current, resume, try, export, rename, show its folder,
        tick it for comparing, move it to the trash."""
        info = next((s.info for s in self.summaries if s.info.path == Path(run_dir)), None)
        if info is None:
            return None
        menu = QMenu(self)
        menu.setObjectName("history.menu")
        menu.setToolTipsVisible(True)  # a disabled action says why
        training = self.slots["train"].state != "idle"
        current = self.session.run_dir is not None and Path(self.session.run_dir) == info.path

        def add(text, fn, enabled=True, tip=""):
            a = menu.addAction(text)
            a.triggered.connect(fn)
            a.setEnabled(enabled)
            if tip:
                a.setToolTip(tip)
            return a

        add("Make current" if not current else "Current run", lambda: self.select_run(info.path), not current)
        step = checkpoint_step(info)
        acts = self.actions(info)
        add(f"Resume from step {step:,}" if step is not None else "Resume",
            lambda: self.ctx.page("train").resume_run(info.path), *acts["resume"])
        add("Try", lambda: (self.select_run(info.path), self.ctx.go_to(TRY)), *acts["try"])
        add("Export", lambda: (self.select_run(info.path), self.ctx.go_to(EXPORT)), *acts["export"])
        menu.addSeparator()
        item = self.item_for(info.path)
        ticked = item is not None and item.checkState(0) == Qt.CheckState.Checked
        add("Remove from comparison" if ticked else "Compare (tick)",
            lambda: item is not None and item.setCheckState(
                0, Qt.CheckState.Unchecked if ticked else Qt.CheckState.Checked), item is not None)
        add("Rename", lambda: item is not None and self.list.editItem(item, 0), item is not None)
        add("Show in folder", lambda: show_in_folder(self.ctx, info.path))
        menu.addSeparator()
        running_here = training and current
        add("Move to Trash...", lambda: self._delete(info), not running_here)
        return menu

    def _delete(self, info):
        item = self.item_for(info.path)
        if item is not None:
            self._filling = True
            try:
                self.list.setCurrentItem(item)
            finally:
                self._filling = False
        self.delete_selected()

    def resume_selected(self):
        info = self.selected_info()
        if info is not None:
            self.ctx.page("train").resume_run(info.path)

    def _use_selected(self, step: int):
        info = self.selected_info()
        if info is not None:
            self.select_run(info.path)
            self.ctx.go_to(step)

    def rename_selected(self):
        it = self.list.currentItem()
        if it is not None:
            self.list.editItem(it, 0)

    def rename(self, run_dir: Path, title: str) -> None:
        runs.set_title(run_dir, title)
        self.refresh()

    def delete_selected(self, confirm: bool = True) -> bool:
        info = self.selected_info()
        if info is None:
            return False
        if confirm:
            answer = QMessageBox.question(
                self.ctx.window, "Move run to the trash?",
                f"Move “{info.title}” ({info.path.name}) to the trash?\n\nIts adapter, checkpoints and exports go "
                "with it.", QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                QMessageBox.StandardButton.Cancel)
            if answer != QMessageBox.StandardButton.Yes:
                return False
        ok = move_to_trash(info.path)
        if not ok:
            answer = QMessageBox.question(
                self.ctx.window, "No trash here",
                f"This system has no trash for {info.path}. Delete the run for good?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Cancel)
            if answer != QMessageBox.StandardButton.Yes:
                return False
            shutil.rmtree(info.path, ignore_errors=True)
        if self.session.run_dir == info.path:
            self.session.update(run_dir=None)
        self.opened = None
        self.ctx.status(f"Moved {info.path.name} to the trash" if ok else f"Deleted {info.path.name}", 6000)
        self.refresh()
        return True


def move_to_trash(path: Path) -> bool:
    """The system's trash (Finder's on macOS, the freedesktop trash on Linux), through Qt."""
    import sys

    if sys.platform.startswith("linux"):  # the freedesktop trash lives in the data folder, which may not exist yet
        from PySide6.QtCore import QStandardPaths

        data = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericDataLocation)
        if data:
            Path(data).mkdir(parents=True, exist_ok=True)
    res = QFile.moveToTrash(str(path))
    ok = res[0] if isinstance(res, tuple) else bool(res)
    return bool(ok) and not Path(path).exists()


class SidebarRuns(QListWidget):
    """The sidebar's short list of runs: title, state and a sparkline; a click makes a run current."""

    def __init__(self, history: HistoryPage):
        super().__init__()
        self.history = history
        self.setObjectName("sidebar.runs")
        self.setToolTip("Training runs kept on disk; click one to try or export it.")
        self.setIconSize(sparkline([], 56, 18).size())
        # a long title is cut with "..." (the whole path in the tooltip), never a sideways scroll bar
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
        history.summaries_changed.connect(self.show_runs)
        self.itemClicked.connect(lambda it: history.select_run(Path(it.data(PATH_ROLE))))
        self.itemDoubleClicked.connect(lambda it: history.ctx.go_to(5))
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(
            lambda pos: history._menu_at(self.itemAt(pos), self.viewport().mapToGlobal(pos)))

    def show_runs(self, summaries: list):
        self.clear()
        pal = self.palette()
        for s in summaries:
            info = s.info
            words = state_words(info, self.history.session)
            if info.state != "damaged" and run_problems(info):
                words += ", damaged"  # as the history's list says it
            item = QListWidgetItem(f"{info.title}\n{words}")
            item.setData(PATH_ROLE, str(info.path))
            item.setIcon(QIcon(sparkline(s.train[1], 56, 18, palette=pal)))
            item.setToolTip(f"{info.path}\nmodel: {info.base_model}")
            self.addItem(item)
