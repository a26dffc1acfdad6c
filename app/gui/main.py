"""Start the Qt application."""
from __future__ import annotations

import sys


def run_gui(argv: list[str] | None = None) -> int:
    import core  # noqa: F401  (OpenBLAS before MLX, before any worker imports it)
    from PySide6.QtWidgets import QApplication

    from app.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(argv or sys.argv)
    app.setApplicationName("Tuneloom")
    app.setOrganizationName("Tuneloom")
    win = MainWindow()
    win.show()
    return app.exec()
