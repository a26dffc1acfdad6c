"""Moved to core.export.ollama (the export modules live in the export package).

This old name is an alias of that module (the same module object), so ``import core.ollama``,
``from core.ollama import X`` and tests that patch names on it keep working."""
import sys

from core.export import ollama as _moved

sys.modules[__name__] = _moved
