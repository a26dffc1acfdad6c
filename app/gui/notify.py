"""A system notification when a long job ends: a tray message where the system has a tray, else the
application asks for attention (the Dock icon bounces on macOS, the task bar entry flashes elsewhere)."""
from __future__ import annotations

from PySide6.QtWidgets import QApplication, QSystemTrayIcon, QWidget

_tray: list[QSystemTrayIcon] = []
sent: list[tuple[str, str]] = []  # every notification of this process (tests and screenshots read it)


def notify(window: QWidget, title: str, text: str, error: bool = False) -> str:
    """Show ``title`` / ``text`` outside the window; returns how: "tray" or "alert"."""
    sent.append((title, text))
    if QSystemTrayIcon.isSystemTrayAvailable():
        if not _tray:
            icon = QSystemTrayIcon(window.windowIcon() or QApplication.windowIcon(), QApplication.instance())
            icon.setToolTip("Tuneloom")
            _tray.append(icon)
        tray = _tray[0]
        tray.show()
        kind = QSystemTrayIcon.MessageIcon.Warning if error else QSystemTrayIcon.MessageIcon.Information
        tray.showMessage(title, text, kind, 8000)
        return "tray"
    QApplication.alert(window, 0)
    return "alert"
