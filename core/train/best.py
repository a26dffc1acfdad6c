"""The best adapter, early stop and memorising: BestKeeper follows a run's validation losses."""
from __future__ import annotations

import math
from pathlib import Path

from core import runs
from core.events import NULL_EVENTS, Events

MEMORISING_RISE = 0.02  # validation loss this share above its best (with training loss falling): memorising


class BestKeeper:
    """Follows the validation losses of a run: the best step (lowest validation loss; its adapter is
    saved through ``save``), validations in a row without improvement (early stop after
    ``patience`` of them; 0: never) and memorising (two validations without improvement, the latest
    :data:`MEMORISING_RISE` above the best, while the training loss kept falling), said in the log
    (again only after a new best). Fed every training loss (``train``) and every
    validation (``valid``); a resume replays the kept metrics first (``replay``) so that the
    best-so-far and the count carry on."""

    def __init__(self, patience: int = 0, events: Events | None = None):
        self.patience = max(0, int(patience or 0))
        self.events = events or NULL_EVENTS
        self.best_step: int | None = None
        self.best_loss = math.inf
        self.last_loss: float | None = None
        self.bad = 0
        self.memorising: dict | None = None  # {"best_step", "step", "best_valid_loss", "valid_loss"}
        self._since: list[float] = []
        self._interval: dict[int, float | None] = {}  # validation step -> mean training loss since the one before

    def train(self, loss: float) -> None:
        self._since.append(float(loss))

    def replay(self, history: list) -> None:
        """``history``: [step, train_loss or None, valid_loss or None] in file order (a resume)."""
        for step, tl, vl in history:
            if tl is not None:
                self.train(tl)
            if vl is not None:
                self.valid(int(step), float(vl), quiet=True)

    def valid(self, step: int, loss: float, save=None, quiet: bool = False) -> bool:
        """Note a validation loss; True when the run should stop early."""
        mean_train = sum(self._since) / len(self._since) if self._since else None
        self._since = []
        self._interval[step] = mean_train
        self.last_loss = loss
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.bad = loss, step, 0
            self.memorising = None  # it got better again: that was a bump, not memorising
            if save is not None:
                save(step, loss)
            return False
        self.bad += 1
        ref = self._interval.get(self.best_step)
        if ref is None:  # best before any training (step 0): the first training interval is the reference
            ref = next((v for s, v in sorted(self._interval.items()) if v is not None and s != step), None)
        # memorising: two validations in a row without improvement, the latest clearly above the best,
        # while the training loss went on falling (a single bump is often the noise of a large step)
        if (self.memorising is None and self.bad >= 2 and mean_train is not None and ref is not None
                and mean_train < ref and loss > self.best_loss * (1 + MEMORISING_RISE)):
            self.memorising = {"best_step": self.best_step, "step": step, "best_valid_loss": self.best_loss,
                               "valid_loss": loss}
            if not quiet:
                self.events.log("warning", memorising_text(self.memorising))
        return bool(self.patience) and self.bad >= self.patience


def memorising_text(m: dict) -> str:
    """The words for the memorising warning (the run log, the Train page)."""
    return (f"The model has started to memorise the training examples: at step {m['step']} the validation loss "
            f"is {m['valid_loss']:.4f}, up from {m['best_valid_loss']:.4f} at step {m['best_step']}, while the "
            f"training loss keeps falling. The best adapter (step {m['best_step']}) is kept as "
            f"{runs.BEST_ADAPTERS}; Try, Evaluate and Export use it.")


def _write_report(run_dir: Path, events: Events) -> None:
    from core.report import write_report

    try:
        write_report(run_dir)
    except (OSError, ValueError) as exc:  # the run is done; only its report card is missing
        events.log("warning", f"could not write the report card in {run_dir}: {exc}")


def _record_best(run_dir: Path, step: int, loss: float) -> None:
    """best_step (and its validation loss) in config.json and status.json."""
    runs.update_json(run_dir / "config.json", best_step=step, best_valid_loss=loss)
    runs.update_json(run_dir / "status.json", best_step=step, best_valid_loss=loss)
