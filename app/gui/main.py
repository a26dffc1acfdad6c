"""Start the Qt application (the window side of the launcher; app.cli.main decides)."""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QTimer, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

log = logging.getLogger("tuneloom.gui")
NO_PAINT_TIMEOUT_S = 120  # --quit-after-paint gives up (exit 3) when nothing was painted by then
KERNEL_FILL_DELAY_MS = 3000  # the K-quant kernel cache is filled this long after the window shows


class TuneloomApp(QApplication):
    """The application object. On macOS, files dropped on the Dock icon (or opened with the app
    from Finder) arrive here as QFileOpenEvent, one per file: they are gathered for a moment
    and handed on together through ``files_opened``, or kept until a window connects.

    Only events addressed to the application object pass through :meth:`event` (an event
    filter on the application would see every event of every widget in Python)."""

    files_opened = Signal(list)

    def __init__(self, argv: list[str] | None = None):
        super().__init__(list(argv) if argv else [sys.argv[0] if sys.argv else "tuneloom"])
        self.setApplicationName("Tuneloom")
        self.setOrganizationName("Tuneloom")
        self.setApplicationDisplayName("Tuneloom")
        from core.paths import resources_dir

        icon = resources_dir() / "icons" / "Tuneloom.png"
        if icon.exists():  # the Dock/taskbar icon when not started from the bundle's .icns
            self.setWindowIcon(QIcon(str(icon)))
        self.pending_files: list[Path] = []
        self._handlers: list = []
        self._flush = QTimer(self)
        self._flush.setSingleShot(True)
        self._flush.setInterval(150)
        self._flush.timeout.connect(self.flush_files)

    def event(self, e: QEvent) -> bool:
        if e.type() == QEvent.Type.FileOpen:
            f = e.file() or e.url().toLocalFile()
            if f:
                self.pending_files.append(Path(f))
                self._flush.start()
            return True
        return super().event(e)

    def attach(self, handler) -> None:
        """Send opened files to ``handler`` (a window's open_paths), including any that came before."""
        self._handlers.append(handler)
        self.flush_files()

    def detach(self, handler) -> None:
        if handler in self._handlers:
            self._handlers.remove(handler)

    def flush_files(self):
        """Hand the gathered files to the window; keep them while there is none yet."""
        if not self.pending_files or not self._handlers:
            return
        files, self.pending_files = self.pending_files, []
        self.files_opened.emit(files)
        for handler in list(self._handlers):
            handler(files)


def connect_window(app: QApplication, win) -> None:
    """Route files opened through the system (Dock drops) to ``win``."""
    if isinstance(app, TuneloomApp):
        handler = win.open_paths
        app.attach(handler)
        win.destroyed.connect(lambda *_: app.detach(handler))


class QuitAfterFirstPaint(QObject):
    """Test hook for bundles (``--quit-after-paint``): when the first widget has painted, log
    how long that took, close the window as a user would, and quit. Watches the application's
    events only until that first paint."""

    def __init__(self, app: QApplication, win, started: float):
        super().__init__(app)
        self.app, self.win, self.started, self.painted = app, win, started, False
        app.installEventFilter(self)
        self._give_up = QTimer(self)
        self._give_up.setSingleShot(True)
        self._give_up.timeout.connect(self._no_paint)
        self._give_up.start(NO_PAINT_TIMEOUT_S * 1000)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if not self.painted and event.type() == QEvent.Type.Paint:
            self.painted = True
            self.app.removeEventFilter(self)
            self._give_up.stop()
            ms = (time.perf_counter() - self.started) * 1000
            log.info("quit-after-paint: first paint after %.0f ms (%s)", ms, type(obj).__name__)
            print(f"quit-after-paint: first paint after {ms:.0f} ms", file=sys.stderr, flush=True)
            QTimer.singleShot(300, self._close)  # let this paint and the next events finish
        return False

    def _close(self):
        self.win.close()
        self.app.quit()

    def _no_paint(self):
        log.error("quit-after-paint: nothing was painted within %d s", NO_PAINT_TIMEOUT_S)
        print(f"quit-after-paint: nothing was painted within {NO_PAINT_TIMEOUT_S} s", file=sys.stderr, flush=True)
        self.app.exit(3)


def _fill_kernel_cache() -> None:
    try:
        from core.export import kquants

        kquants.fill_cache_in_background()
    except Exception:  # noqa: BLE001 - only a speed-up: the first export compiles instead
        log.exception("could not start filling the K-quant kernel cache")


def run_gui(argv: list[str] | None = None, quit_after_paint: bool | None = None) -> int:
    """Open the window; returns the exit code. ``quit_after_paint`` (default: the
    TUNELOOM_QUIT_AFTER_PAINT environment variable) closes it after its first paint."""
    started = time.perf_counter()
    if quit_after_paint is None:
        quit_after_paint = os.environ.get("TUNELOOM_QUIT_AFTER_PAINT", "") not in ("", "0")
    try:  # Qt's own warnings into the log; a fatal one (no display, no platform plugin) leaves a report
        from app.logs import install_qt_handler

        install_qt_handler()
    except Exception:  # noqa: BLE001 - logging must never stop the window
        log.exception("could not route Qt messages to the log")

    import core  # noqa: F401  (OpenBLAS before MLX, before any worker imports it)

    from app.gui.main_window import MainWindow

    app = QApplication.instance() or TuneloomApp(argv or sys.argv)
    win = MainWindow()
    connect_window(app, win)
    watcher = QuitAfterFirstPaint(app, win, started) if quit_after_paint else None
    win.show()
    if not quit_after_paint:  # the K-quant kernels compiled now, idle, not in the first export
        QTimer.singleShot(KERNEL_FILL_DELAY_MS, _fill_kernel_cache)
    # files named on the command line (`tuneloom data.jsonl`, or "Open with" on Linux/Windows)
    files = [Path(a) for a in (argv or sys.argv)[1:] if not a.startswith("-") and Path(a).exists()]
    if files:
        QTimer.singleShot(0, lambda: win.open_paths(files))
    code = app.exec()
    # the window asked every job to stop when it closed; let them end before Python tears down
    from PySide6.QtCore import QThreadPool

    QThreadPool.globalInstance().waitForDone(5000)
    if watcher is not None:
        log.info("quit-after-paint: window closed, exit code %d", code)
    return code
