"""Moved to core.export.model_card (the export modules live in the export package).

This old name is an alias of that module (the same module object), so ``import core.model_card``,
``from core.model_card import X`` and tests that patch names on it keep working."""
import sys

from core.export import model_card as _moved

sys.modules[__name__] = _moved
