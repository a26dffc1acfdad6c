"""Moved to core.export.hub_push (the export modules live in the export package).

This old name is an alias of that module (the same module object), so ``import core.hub_push``,
``from core.hub_push import X`` and tests that patch names on it keep working."""
import sys

from core.export import hub_push as _moved

sys.modules[__name__] = _moved
