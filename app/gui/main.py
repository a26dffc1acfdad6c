"""Start the Qt application."""
from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QEvent, QTimer, Signal
from PySide6.QtWidgets import QApplication


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


def run_gui(argv: list[str] | None = None) -> int:
    import core  # noqa: F401  (OpenBLAS before MLX, before any worker imports it)

    from app.gui.main_window import MainWindow

    app = QApplication.instance() or TuneloomApp(argv or sys.argv)
    win = MainWindow()
    connect_window(app, win)
    win.show()
    # files named on the command line (`tuneloom data.jsonl`, or "Open with" on Linux/Windows)
    files = [Path(a) for a in (argv or sys.argv)[1:] if not a.startswith("-") and Path(a).exists()]
    if files:
        QTimer.singleShot(0, lambda: win.open_paths(files))
    code = app.exec()
    # the window asked every job to stop when it closed; let them end before Python tears down
    from PySide6.QtCore import QThreadPool

    QThreadPool.globalInstance().waitForDone(5000)
    return code
