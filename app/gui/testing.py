"""Helpers for driving the real widgets from tests and the screenshot script (no pytest here)."""
from __future__ import annotations

import time
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


class TickMonitor(QObject):
    """A 10 ms timer on the GUI thread that records the largest gap between its ticks: how long
    the event loop was unable to run (a frozen window shows up as a large gap)."""

    def __init__(self, interval_ms: int = 10, parent=None):
        super().__init__(parent)
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self._last: float | None = None

    def start(self):
        self._last = time.perf_counter()
        self.timer.start()
        return self

    def stop(self):
        self.timer.stop()

    def _tick(self):
        now = time.perf_counter()
        if self._last is not None:
            self.gaps.append(now - self._last)
        self._last = now

    @property
    def max_gap_ms(self) -> float:
        return 1000 * max(self.gaps, default=0.0)

    @property
    def ticks(self) -> int:
        return len(self.gaps)


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
