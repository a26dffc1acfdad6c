"""A run's metrics (metrics.jsonl): reading them, a metric's series, smoothing, and how the loss moved."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    """Every complete line of metrics.jsonl (a torn last line from a crash is ignored)."""
    out = []
    p = Path(run_dir) / "metrics.jsonl"
    try:
        raw = p.read_bytes()
    except OSError:
        return out
    # a damaged line (a torn write, a stray byte) is skipped; the others are read as usual
    for line in raw.splitlines():
        try:
            m = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(m, dict) and _number(m.get("step", 0)) is not None:
            out.append(m)
    return out


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            v = float(v)
        except (TypeError, ValueError):
            return None
    return float(v) if v == v and abs(v) != float("inf") else None


def series(metrics: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, one value per step (the last written wins)."""
    by_step: dict[int, float] = {}
    for m in metrics:
        v = m.get(name)
        step = _number(m.get("step", 0))
        if isinstance(v, (int, float)) and not isinstance(v, bool) and step is not None:
            by_step[int(step)] = float(v)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def smoothed(values, weight: float) -> list[float]:
    """Exponential moving average with the start-up bias removed (as TensorBoard and Adam do): the first
    value is not taken as the average of everything before it, so the line does not start at one raw value."""
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        acc = weight * acc + (1 - weight) * float(v)
        norm = weight * norm + (1 - weight)
        out.append(acc / norm if norm else float(v))
    return out


@dataclass
class LossSummary:
    """How a run's loss moved, like with like: ``first`` and ``last`` are the same kind of figure."""

    kind: str  # "validation" (measured on held-out examples) or "training" (smoothed over a window)
    first: float
    last: float
    first_step: int
    last_step: int
    window: int = 1  # training: steps averaged at each end

    @property
    def fell(self) -> bool:
        return self.last < self.first

    def words(self) -> str:
        """'validation loss 5.95 → 2.68' / 'training loss 3.10 → 1.20 (smoothed over 20 steps at each end)'."""
        text = f"{self.kind} loss {self.first:.3f} → {self.last:.3f}"
        if self.kind == "training" and self.window > 1:
            text += f" (smoothed over {self.window} steps at each end)"
        return text


def summary_window(n: int) -> int:
    """Steps smoothed at each end of a run of ``n`` steps: a fifth of it, 8 to 100, at most half."""
    return max(1, min(n // 2, max(8, min(100, n // 5))))


def loss_summary(metrics: list[dict]) -> LossSummary | None:
    """The run's loss at its start and its end. The validation loss first, when it was measured twice or
    more (it is measured on the same held-out examples each time); otherwise the training loss, smoothed
    with bias correction over the same number of steps at each end. A raw first value would mislead: with
    length-grouped batches the raw loss can alternate between examples the model already knows (~0) and
    new ones (3-7), so one step says little."""
    vs, vv = series(metrics, "valid_loss")
    if len(vv) >= 2:
        return LossSummary("validation", vv[0], vv[-1], vs[0], vs[-1])
    ts, tv = series(metrics, "train_loss")
    if not tv:
        return None
    w = summary_window(len(tv))
    weight = 1.0 - 2.0 / (w + 1)  # an average over about w steps
    return LossSummary("training", smoothed(tv[:w], weight)[-1], smoothed(tv[-w:], weight)[-1], ts[0], ts[-1], w)


def learning_problems(summary: LossSummary | None, steps: int, warmup: int = 0, min_steps: int = 30) -> list[str]:
    """Why a finished run probably learned little, in words (empty: nothing to say)."""
    out = []
    if steps < min_steps:
        out.append(f"only {steps} steps: too short to learn much (at least {min_steps} is a sensible minimum)")
    if warmup and warmup >= steps:
        out.append(f"the warm-up ({warmup} steps) was as long as the run, so the learning rate never reached "
                   "its full value")
    if summary is None:
        out.append("no loss was recorded")
    elif not summary.fell:
        out.append(f"the {summary.kind} loss did not fall ({summary.first:.3f} → {summary.last:.3f})")
    return out
