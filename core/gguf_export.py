"""Moved to core.export.gguf (the export modules live in the export package).

This old name is an alias of that module (the same module object), so ``import core.gguf_export``,
``from core.gguf_export import X`` and tests that patch names on it keep working."""
import sys

from core.export import gguf as _moved

sys.modules[__name__] = _moved
