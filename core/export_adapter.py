"""Moved to core.export.adapter (the export modules live in the export package).

This old name is an alias of that module (the same module object), so ``import core.export_adapter``,
``from core.export_adapter import X`` and tests that patch names on it keep working."""
import sys

from core.export import adapter as _moved

sys.modules[__name__] = _moved
