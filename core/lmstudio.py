"""Moved to core.export.lmstudio (the export modules live in the export package).

This old name is an alias of that module (the same module object), so ``import core.lmstudio``,
``from core.lmstudio import X`` and tests that patch names on it keep working."""
import sys

from core.export import lmstudio as _moved

sys.modules[__name__] = _moved
