"""Moved to core.export.mlx (the export modules live in the export package).

This old name is an alias of that module (the same module object), so ``import core.mlx_export``,
``from core.mlx_export import X`` and tests that patch names on it keep working."""
import sys

from core.export import mlx as _moved

sys.modules[__name__] = _moved
