"""Moved to core.export.kquants_jit (the export modules live in the export package).

This old name is an alias of that module (the same module object), so ``import core.kquants_jit``,
``from core.kquants_jit import X`` and tests that patch names on it keep working."""
import sys

from core.export import kquants_jit as _moved

sys.modules[__name__] = _moved
