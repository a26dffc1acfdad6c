"""Moved to core.export.quant_price (the export modules live in the export package).

This old name is an alias of that module (the same module object), so ``import core.quant_price``,
``from core.quant_price import X`` and tests that patch names on it keep working."""
import sys

from core.export import quant_price as _moved

sys.modules[__name__] = _moved
