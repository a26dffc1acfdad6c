"""Helpers for driving the real widgets from tests and the screenshot script (no pytest here)."""
from __future__ import annotations

import os
import time
import weakref
from pathlib import Path

from PySide6.QtCore import QMimeData, QObject, QPoint, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDragEnterEvent, QDragLeaveEvent, QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import QApplication


def file_mime(paths) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(Path(p).resolve())) for p in paths])
    return mime


# Which point type each event's constructor takes, once known (a wrong guess costs a TypeError
# whose message PySide builds by introspecting every signature: tens of milliseconds).
_POINT_TYPE: dict = {}


def _make(cls, pos: QPointF, mime: QMimeData):
    """Drag events take a QPoint in PySide6 6.11 (QDragEnterEvent, QDragMoveEvent) and a QPointF in
    6.12, while QDropEvent takes a QPointF in both: use the float point where the version says so,
    else try both."""
    import PySide6

    args = (Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    ipos = QPoint(round(pos.x()), round(pos.y()))
    if cls not in _POINT_TYPE:
        float_first = cls is QDropEvent or tuple(PySide6.__version_info__[:2]) >= (6, 12)
        _POINT_TYPE[cls] = QPointF if float_first else QPoint
    first = _POINT_TYPE[cls]
    try:
        event = cls(pos if first is QPointF else ipos, *args)
    except TypeError:
        _POINT_TYPE[cls] = QPoint if first is QPointF else QPointF
        event = cls(ipos if first is QPointF else pos, *args)
    event._mime = mime  # the event only points at the mime data: keep it alive as long as the event
    return event


def drag_enter_event(pos: QPointF, mime: QMimeData) -> QDragEnterEvent:
    return _make(QDragEnterEvent, pos, mime)


def drag_move_event(pos: QPointF, mime: QMimeData) -> QDragMoveEvent:
    return _make(QDragMoveEvent, pos, mime)


def drop_event(pos: QPointF, mime: QMimeData) -> QDropEvent:
    return _make(QDropEvent, pos, mime)


def simulate_drop(widget, paths, leave_instead: bool = False) -> tuple[bool, bool]:
    """Drag ``paths`` over the middle of ``widget`` and drop them there, through the event system
    (QApplication.sendEvent, so the widget's event() dispatches as for a real drag).
    Returns (whether the enter was accepted, whether the drop was accepted)."""
    mime = file_mime(paths)
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    enter = drag_enter_event(pos, mime)
    QApplication.sendEvent(widget, enter)
    entered = enter.isAccepted()
    if leave_instead:
        QApplication.sendEvent(widget, QDragLeaveEvent())
        return entered, False
    move = drag_move_event(pos, mime)
    QApplication.sendEvent(widget, move)
    drop = drop_event(pos, mime)
    QApplication.sendEvent(widget, drop)
    return entered, drop.isAccepted()


# No scheduler delay on a loaded machine reaches this; a GUI thread waiting this long (for the GIL, a lock)
# is a frozen window whatever the machine.
STALL_CEILING_MS = 1000


def _close_all(fds: list[int]) -> None:
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass


class TickMonitor(QObject):
    """A 10 ms timer on the GUI thread that records the gaps between its ticks: how long the event loop
    was unable to run (a frozen window shows up as a large gap).

    Two figures per gap: the wall-clock gap, and the CPU time the GUI thread itself spent in it
    (``time.thread_time`` read on the GUI thread). Work done on the GUI thread shows in both; a loaded
    machine that did not schedule the process for a while shows only in the first. ``max_busy_ms`` is
    the figure a test can hold to 100 ms on any machine; ``max_stall_ms`` catches the GUI thread waiting
    (for the GIL, a lock) and is held to a ceiling: the gap less the time the thread stood runnable on a
    CPU's run queue while the machine ran others (Linux's schedstat; elsewhere nothing is taken off). A
    clean clone beside three other suites once saw a 1288 ms gap in which the GUI thread spent 34 ms of
    CPU: the scheduler's delay, not the window's."""

    def __init__(self, interval_ms: int = 10, parent=None):
        super().__init__(parent)
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self.busy: list[float] = []
        self.queued: list[float] = []
        self._last: float | None = None
        self._last_cpu: float | None = None
        self._last_queued = 0.0
        self._schedstat: int | None = None
        # the file is closed by stop(), by a second start(), and at the latest when the monitor goes
        # (a test that fails before its stop() would otherwise keep it open for the rest of the suite)
        self._fds: list[int] = []
        weakref.finalize(self, _close_all, self._fds)

    def start(self):
        """Call on the GUI thread (the schedstat file opened here is that thread's)."""
        self._close_schedstat()
        try:
            self._schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            self._fds.append(self._schedstat)
        except OSError:
            self._schedstat = None
        self._last, self._last_cpu, self._last_queued = time.perf_counter(), time.thread_time(), self._queued()
        self.timer.start()
        return self

    def _queued(self) -> float:
        """Seconds this thread has stood runnable, waiting for a CPU (0.0 where the kernel does not say)."""
        if self._schedstat is None:
            return 0.0
        try:
            return int(os.pread(self._schedstat, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def stop(self):
        self.timer.stop()
        self._close_schedstat()

    def _close_schedstat(self):
        if self._schedstat is not None:
            self._fds.remove(self._schedstat)
            os.close(self._schedstat)
            self._schedstat = None

    def _tick(self):
        now, cpu, queued = time.perf_counter(), time.thread_time(), self._queued()
        if self._last is not None:
            self.gaps.append(now - self._last)
            self.busy.append(cpu - self._last_cpu)
            self.queued.append(queued - self._last_queued)
        self._last, self._last_cpu, self._last_queued = now, cpu, queued

    @property
    def max_gap_ms(self) -> float:
        return 1000 * max(self.gaps, default=0.0)

    @property
    def max_busy_ms(self) -> float:
        """The most CPU the GUI thread spent between two ticks: how long its own work held the loop."""
        return 1000 * max(self.busy, default=0.0)

    @property
    def max_stall_ms(self) -> float:
        """The longest gap less the time the GUI thread waited for a CPU in it: how long it stood still."""
        return 1000 * max((g - q for g, q in zip(self.gaps, self.queued)), default=0.0)

    @property
    def ticks(self) -> int:
        return len(self.gaps)

    def responsive(self, busy_ms: float = 100) -> bool:
        """The GUI thread's own work never held the loop ``busy_ms``, and it never stood still a second."""
        return self.max_busy_ms < busy_ms and self.max_stall_ms < STALL_CEILING_MS

    def __repr__(self) -> str:
        return (f"TickMonitor({self.ticks} ticks, largest gap {self.max_gap_ms:.0f} ms, most GUI-thread CPU in one "
                f"gap {self.max_busy_ms:.0f} ms, longest stand-still less the wait for a CPU {self.max_stall_ms:.0f} "
                f"ms)")


def pump_events(app, seconds: float = 0.0, cond=None, timeout: float = 600, slice_ms: int = 30) -> None:
    """Run ``app``'s event loop for ``seconds``, or until ``cond()`` is true (TimeoutError after ``timeout``):
    for scripts that drive the window without pytest-qt (docs/screenshots*.py)."""
    from PySide6.QtCore import QEventLoop

    end = time.time() + (seconds if cond is None else timeout)
    while True:
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, slice_ms)
        if cond is not None and cond():
            return
        if time.time() > end:
            if cond is not None:
                raise TimeoutError
            return


def _layout_widgets(layout) -> list:
    """Every widget a layout places, nested layouts included."""
    out = []
    for i in range(layout.count()):
        item = layout.itemAt(i)
        if item.widget() is not None:
            out.append(item.widget())
        elif item.layout() is not None:
            out += _layout_widgets(item.layout())
    return out


def _name(w) -> str:
    text = ""
    for attr in ("text", "title"):
        f = getattr(w, attr, None)
        if callable(f):
            try:
                text = str(f())
            except TypeError:
                text = ""
            if text:
                break
    text = " ".join(text.split())
    return f"{type(w).__name__}({w.objectName() or '-'}{': ' + text[:40] if text else ''})"


def layout_problems(root) -> list[str]:
    """What a person would see cut or covered on ``root`` as laid out now, from widget geometries (not pixels):

    - a label whose text needs more room than it has (a word-wrapped label: its height for its width; any
      other label, button or check box: its size hint's width), unless it shows an ellipsis by design;
    - two widgets that one layout places side by side (or one above the other) and that overlap.

    Only widgets visible on screen count (a page not shown is not checked: show each page in turn)."""
    from PySide6.QtWidgets import QAbstractButton, QLabel, QTreeWidget, QWidget

    problems = []
    widgets = [root] + root.findChildren(QWidget)
    visible = [w for w in widgets if w.isVisible() and w.width() > 0 and w.height() > 0]
    for w in visible:
        if isinstance(w, QLabel) and w.text() and w.pixmap().isNull():
            if w.wordWrap():
                need = w.heightForWidth(w.contentsRect().width() + 2 * w.margin())
                if need > w.height() + 2:
                    problems.append(f"{_name(w)} is cut: needs {need} px of height, has {w.height()}")
            elif w.sizeHint().width() > w.width() + 2 and w.sizePolicy().horizontalPolicy().name != "Ignored":
                problems.append(f"{_name(w)} is cut: needs {w.sizeHint().width()} px of width, has {w.width()}")
        elif isinstance(w, QAbstractButton) and w.text():
            hint = w.sizeHint()
            if hint.width() > w.width() + 2:
                problems.append(f"{_name(w)} is cut: needs {hint.width()} px of width, has {w.width()}")
        elif isinstance(w, QTreeWidget) and w.topLevelItemCount() and not w.isHeaderHidden():
            need = w.sizeHintForColumn(0)  # the first column names things (a run, a file): never cut
            if need > w.columnWidth(0) + 2:
                problems.append(f"{_name(w)} cuts its first column: needs {need} px, has {w.columnWidth(0)}")
        lay = w.layout()
        if lay is None:
            continue
        placed = [c for c in _layout_widgets(lay) if c.isVisible() and c.parentWidget() is w and c.width() > 0
                  and c.height() > 0]
        for i, a in enumerate(placed):
            ga = a.geometry().adjusted(1, 1, -1, -1)  # touching edges are not an overlap
            for b in placed[i + 1:]:
                if ga.intersects(b.geometry().adjusted(1, 1, -1, -1)):
                    problems.append(f"{_name(a)} and {_name(b)} overlap in {_name(w)}")
    return problems


def open_window(app, home, size, *, timeout: float = 600, slice_ms: int = 10, ready=None):
    """A MainWindow for a screenshot script (docs/screenshots*.py): its own settings file under ``home``,
    at ``size``, shown, and its first model check done (or ``ready(window)``). Returns the window and a
    ``pump(seconds=0.0, cond=None, timeout=...)`` that runs ``app``'s event loop."""
    from pathlib import Path

    from PySide6.QtCore import QSettings

    from app.gui.main_window import MainWindow

    def pump(seconds: float = 0.0, cond=None, timeout: float = timeout):
        pump_events(app, seconds, cond, timeout, slice_ms=slice_ms)

    w = MainWindow(settings=QSettings(str(Path(home) / "settings.ini"), QSettings.Format.IniFormat))
    w.resize(*size)
    w.show()
    pump(cond=(lambda: ready(w)) if ready is not None else (lambda: w.model_dir is not None))
    return w, pump
