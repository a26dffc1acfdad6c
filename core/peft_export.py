"""Moved to core.export.peft (the export modules live in the export package).

This old name is an alias of that module (the same module object), so ``import core.peft_export``,
``from core.peft_export import X`` and tests that patch names on it keep working."""
import sys

from core.export import peft as _moved

sys.modules[__name__] = _moved
