"""Moved to core.export.fuse (the export modules live in the export package).

This old name is an alias of that module (the same module object), so ``import core.fuse``,
``from core.fuse import X`` and tests that patch names on it keep working."""
import sys

from core.export import fuse as _moved

sys.modules[__name__] = _moved
