"""What every page gets from the window, and the page base class."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

from app.session import Session
from core.events import TuneloomError

# Jobs that change a page's layout start this much later, so the page repaints before they compete for the GIL.
PAINT_FIRST_MS = 60


def error_text(exc) -> str:
    return exc.user_message() if isinstance(exc, TuneloomError) else f"{type(exc).__name__}: {exc}"


@dataclass(eq=False)
class AppContext:
    """The window's shared parts, handed to every page."""

    session: Session
    slots: object  # app.gui.workers.JobSlots
    settings: QSettings
    window: QWidget  # parent for dialogs and notifications
    status: Callable[..., None] = lambda text, ms=0: None  # the status bar
    go_to: Callable[[int], None] = lambda step: None  # show a step's page
    open_paths: Callable[[list], None] = lambda paths: None  # a drop: models to Model, the rest to Data
    pages: dict = field(default_factory=dict)  # key -> Page, filled in by the window

    def page(self, key: str):
        return self.pages[key]


class Page(QWidget):
    """A step's page: a heading, then what the subclass builds into ``self.layout_``."""

    key = ""
    title = ""
    blurb = ""

    def __init__(self, ctx: AppContext, heading: bool = True, scroll: bool = False):
        super().__init__()
        self.ctx = ctx
        self.session = ctx.session
        self.slots = ctx.slots
        self.settings = ctx.settings
        if scroll:  # a page taller than a small window scrolls instead of squeezing its widgets
            outer = QVBoxLayout(self)
            outer.setContentsMargins(0, 0, 0, 0)
            area = QScrollArea()
            area.setWidgetResizable(True)
            area.setFrameShape(QFrame.Shape.NoFrame)
            inner = QWidget()
            area.setWidget(inner)
            outer.addWidget(area)
            self.layout_ = QVBoxLayout(inner)
        else:
            self.layout_ = QVBoxLayout(self)
        if heading and self.title:
            head = QLabel(f"<h2>{self.title}</h2><p>{self.blurb}</p>")
            head.setWordWrap(True)
            self.layout_.addWidget(head)

    # -- the window calls these
    def restore_settings(self) -> None:
        pass

    def save_settings(self) -> None:
        pass

    def close_request(self) -> bool:
        """May the window close now? A page with work worth keeping can ask, or stop it first."""
        return True

    def int_setting(self, key: str, default: int) -> int:
        try:
            return int(self.settings.value(key, default))
        except (TypeError, ValueError):  # a settings file edited by hand, or from another version
            return default
