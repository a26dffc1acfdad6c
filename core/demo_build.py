"""Moved to core.demo.build (the demo's parts live in the core.demo package).

This old name is an alias of that module (the same module object), so ``import core.demo_build``,
``from core.demo_build import X`` and tests that patch names on it keep working. The documented
command ``python -m core.demo_build`` runs this file as ``__main__``: it runs the build's main."""
import sys

from core.demo import build as _moved

if __name__ == "__main__":
    _moved.main()
else:
    sys.modules[__name__] = _moved
