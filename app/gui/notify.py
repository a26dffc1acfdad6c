"""A system notification when a long job ends: a tray message where the system has a tray, else the
application asks for attention (the Dock icon bounces on macOS, the task bar entry flashes elsewhere)."""
from __future__ import annotations

from PySide6.QtCore import Qt
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


def show_in_folder(ctx, path) -> bool:
    """Open the folder that holds ``path`` (or the folder ``path``) in the file manager. Without one (a
    desktop with none, a server), say so in the window and put the path on the clipboard: Qt alone would
    only print a warning on stderr. Returns whether a file manager took it."""
    from pathlib import Path

    from PySide6.QtCore import QUrl
    from PySide6.QtGui import QDesktopServices, QGuiApplication
    from PySide6.QtWidgets import QMessageBox

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))):
        return True
    QGuiApplication.clipboard().setText(str(p))
    text = f"No file manager opened {folder}. The path is copied to the clipboard: {p}"
    ctx.status(text, 20000)
    box = QMessageBox(QMessageBox.Icon.Information, "No file manager", text, QMessageBox.StandardButton.Ok,
                      ctx.window)
    box.setObjectName("reveal.no_file_manager")
    box.setTextInteractionFlags(box.textInteractionFlags() | Qt.TextInteractionFlag.TextSelectableByMouse)
    box.setModal(False)
    box.show()  # not exec(): nothing waits on it
    sent.append(("No file manager", text))
    return False
