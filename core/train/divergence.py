"""Telling a diverged run from a noisy one, on smoothed and validation losses only.

A model whose output has become a uniform distribution over its vocabulary has a loss of exactly
ln(vocabulary) on every token, whatever it is shown; one whose weights exploded has more. A healthy
run never stays there, but a single batch can come close: on the sample data a healthy run's batch
loss jumps from 0.003 to 7.2 between its first two steps (batches of examples the base model already
knows alternate with new ones). So one batch is never judged: the guard looks at the mean of the
last ``window`` batch losses, after the warm-up, and only when that mean stays at or above
ln(vocabulary) for ``patience`` steps in a row, in a run that started below it (its first batches, or
its validation loss before any update). A validation loss is
judged alone (it is already a mean over many examples) when it is far above the run's first one.
"""
from __future__ import annotations

import math
from collections import deque

# "at or above ln(vocabulary)": a uniform output measures ln(V) up to rounding, so a hair below counts
NEAR_UNIFORM = 0.98
# a validation loss this many times its first value (and VALID_MARGIN above it) is "far above"
VALID_FACTOR = 3.0
VALID_MARGIN = 2.0


class DivergenceGuard:
    def __init__(self, vocab_size: int | None, warmup: int, window: int = 5, patience: int = 5):
        self.ceiling = math.log(vocab_size) if vocab_size and vocab_size > 1 else None
        self.warmup, self.window, self.patience = max(0, int(warmup)), window, patience
        self.recent: deque[float] = deque(maxlen=window)
        self.first: list[float] = []
        self.bad_since: int | None = None
        self.valid_start: float | None = None
        self.valid_ok_step = 0  # the last step whose validation loss was fine
        self.onset: int | None = None  # the first step of the losses that showed the divergence

    def train_loss(self, step: int, loss: float) -> str | None:
        """What is wrong (a sentence) once the smoothed loss has stayed at ln(V) too long; else None."""
        self.recent.append(float(loss))
        if len(self.first) < self.window:
            self.first.append(float(loss))
        if self.ceiling is None or len(self.recent) < self.window or step <= self.warmup:
            self.bad_since = None
            return None
        smooth = sum(self.recent) / len(self.recent)
        # the model started below ln(V): its first validation loss (measured before any update) says so best;
        # the first batches alone may not (a batch of new examples can cost the base model more than ln(V),
        # and with a huge learning rate the second step is already uniform)
        started_below = (sum(self.first) / len(self.first) < NEAR_UNIFORM * self.ceiling
                         or (self.valid_start is not None and self.valid_start < NEAR_UNIFORM * self.ceiling))
        if not (started_below and smooth >= NEAR_UNIFORM * self.ceiling):
            self.bad_since = None
            return None
        if self.bad_since is None:
            self.bad_since = step
        if step - self.bad_since + 1 < self.patience:
            return None
        self.onset = max(1, self.bad_since - self.window + 1)
        return (f"the mean training loss of the last {self.window} steps has stayed at {smooth:.2f} or "
                f"more since step {self.bad_since}, at or above ln(vocabulary) = {self.ceiling:.2f}: the "
                f"model now answers every token with a uniform guess")

    def valid_loss(self, step: int, loss: float) -> str | None:
        """What is wrong when a validation loss is far above the run's first one; else None."""
        loss = float(loss)
        if self.valid_start is None:
            self.valid_start, self.valid_ok_step = loss, step
            return None
        start = self.valid_start
        if math.isfinite(loss) and not (loss > VALID_FACTOR * start and loss > start + VALID_MARGIN):
            self.valid_ok_step = step
            return None
        # anything after the last fine validation may already be spoilt
        self.onset = min(self.onset or step, self.valid_ok_step + 1)
        return (f"the validation loss at step {step} is {loss:.2f}, far above its starting value "
                f"{start:.2f}")
