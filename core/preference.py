"""Moved to core.train.preference (the training methods live in the train package).

This old name is an alias of that module (the same module object), so ``import core.preference``,
``from core.preference import X`` and tests that patch names on it keep working."""
import sys

from core.train import preference as _moved

sys.modules[__name__] = _moved
