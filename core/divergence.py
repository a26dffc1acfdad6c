"""Moved to core.train.divergence (the divergence guard is the trainer's).

This old name is an alias of that module (the same module object), so ``import core.divergence``,
``from core.divergence import X`` and tests that patch names on it keep working."""
import sys

from core.train import divergence as _moved

sys.modules[__name__] = _moved
