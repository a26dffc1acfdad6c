"""Moved to app/gui/pages/model.py (kept for imports of the old name)."""
from app.gui.pages.model import *  # noqa: F401,F403
from app.gui.pages.model import ModelCard, ModelPage  # noqa: F401
