"""Moved to core.export.quants (the export modules live in the export package).

This old name is an alias of that module (the same module object), so ``import core.quants``,
``from core.quants import X`` and tests that patch names on it keep working."""
import sys

from core.export import quants as _moved

sys.modules[__name__] = _moved
