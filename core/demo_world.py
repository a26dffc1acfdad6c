"""Moved to core.demo.world (the demo's parts live in the core.demo package).

This old name is an alias of that module (the same module object), so ``import core.demo_world``,
``from core.demo_world import X`` and tests that patch names on it keep working."""
import sys

from core.demo import world as _moved

sys.modules[__name__] = _moved
