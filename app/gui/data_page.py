"""Moved to app/gui/pages/data.py (kept for imports of the old name)."""
from app.gui.pages.data import *  # noqa: F401,F403
from app.gui.pages.data import DataPage, format_label  # noqa: F401
