"""The training plot, the run-comparison plot and loss sparklines.

The training plot keeps its points in growing numpy buffers and redraws at most ten times a
second (a timer picks up what arrived since), with pyqtgraph's clip-to-view and peak
downsampling, so 20,000 points cost a repaint of about a plot's width of points.
"""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPalette, QPen, QPixmap
from PySide6.QtWidgets import QGraphicsItem

from app.gui import theme
from app.gui.widgets import _ThemedPlot
from core.runs import smoothed

TRAIN_COLOR = "#3b82f6"
VALID_COLOR = "#f97316"
LR_COLOR = "#9ca3af"
# colours of the runs overlaid in a comparison, in order
RUN_COLORS = ["#3b82f6", "#f97316", "#10b981", "#a855f7", "#ef4444", "#eab308", "#06b6d4", "#ec4899"]
REDRAW_MS = 200


class _Series:
    """Steps and values in a numpy buffer that doubles as it fills; a step again drops it and what follows."""

    def __init__(self, capacity: int = 1024):
        self.x = np.zeros(capacity, dtype=np.float64)
        self.y = np.zeros(capacity, dtype=np.float64)
        self.n = 0

    def clear(self):
        self.n = 0

    def cut_from(self, step: float) -> None:
        """Forget every point at ``step`` or later (a resumed run replays from its checkpoint)."""
        if self.n and self.x[self.n - 1] >= step:
            self.n = int(np.searchsorted(self.x[: self.n], step, side="left"))

    def append(self, step: float, value: float) -> None:
        if self.n == len(self.x):
            self.x = np.concatenate([self.x, np.zeros_like(self.x)])
            self.y = np.concatenate([self.y, np.zeros_like(self.y)])
        self.x[self.n] = step
        self.y[self.n] = value
        self.n += 1

    def extend(self, xs, ys) -> None:
        for x, y in zip(xs, ys):
            self.append(x, y)

    @property
    def xs(self) -> np.ndarray:
        return self.x[: self.n]

    @property
    def ys(self) -> np.ndarray:
        return self.y[: self.n]


def ema(values, weight: float) -> np.ndarray:
    """Exponential moving average with the start-up bias removed (core.runs.smoothed: the banner's figures
    and the bold line are the same smoothing)."""
    return np.asarray(smoothed(values, weight), dtype=np.float64)


class TrainPlot(_ThemedPlot):
    """Raw training loss (faint), its smoothed line, validation loss as markers, and the learning rate
    on a second axis that can be hidden. Zoom and pan with the mouse; the "A" button auto-ranges."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("train.plot")
        self.setLabel("bottom", "step")
        self.setLabel("left", "loss")
        self.addLegend(offset=(-10, 10))
        item = self.getPlotItem()
        item.setClipToView(True)
        item.setDownsampling(auto=True, mode="peak")
        faint = QColor(TRAIN_COLOR)
        faint.setAlpha(80)
        self.raw_curve = self.plot([], [], pen=pg.mkPen(faint, width=1), name="training loss")
        self.ema_curve = self.plot([], [], pen=pg.mkPen(TRAIN_COLOR, width=2.2), name="smoothed")
        self.valid_curve = self.plot([], [], pen=None, symbol="o", symbolSize=7, symbolBrush=VALID_COLOR,
                                     symbolPen=pg.mkPen(VALID_COLOR), name="validation loss")
        # the best point: the lowest validation loss, whose adapter the run keeps (adapters_best.safetensors)
        self.best_marker = self.plot([], [], pen=None, symbol="star", symbolSize=17, symbolBrush=VALID_COLOR,
                                     symbolPen=pg.mkPen(TRAIN_COLOR, width=1.5), name="best")
        # the learning rate: its own view box and the right axis
        self.lr_view = pg.ViewBox()
        item.showAxis("right")
        item.scene().addItem(self.lr_view)
        item.getAxis("right").linkToView(self.lr_view)
        item.getAxis("right").setLabel("learning rate")
        self.lr_view.setXLink(item)
        self.lr_curve = pg.PlotDataItem([], [], pen=pg.mkPen(LR_COLOR, width=1, style=Qt.PenStyle.DashLine))
        self.lr_curve.setClipToView(True)
        self.lr_curve.setDownsampling(auto=True, method="peak")
        self.lr_view.addItem(self.lr_curve)
        item.vb.sigResized.connect(self._sync_views)
        # the axes' text is the costly part of a repaint: keep each axis as a picture until its range changes
        for name in ("left", "bottom", "right"):
            item.getAxis(name).setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self.total_steps: int | None = None  # a live run's length: the x axis spans it, so it does not move each step
        self.smoothing = 0.9
        self.train_s, self.valid_s, self.lr_s = _Series(), _Series(), _Series()
        # what the right-hand axis shows: the learning rate, or a preference run's reward figures
        self.right_s = {"learning_rate": self.lr_s, "reward_margin": _Series(), "reward_accuracy": _Series()}
        self.right = "learning_rate"
        self._ema = np.zeros(1024)
        self._acc = self._norm = 0.0
        self._dirty = False
        self.redraws = 0
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self._redraw)
        self._timer.start()
        self._apply_palette()

    def _sync_views(self):
        self.lr_view.setGeometry(self.getPlotItem().vb.sceneBoundingRect())
        self.lr_view.linkedViewChanged(self.getPlotItem().vb, self.lr_view.XAxis)

    # -- data
    def clear_data(self):
        for s in (self.train_s, self.valid_s, *self.right_s.values()):
            s.clear()
        self._acc = self._norm = 0.0
        self.total_steps = None
        self._dirty = True
        self._redraw()
        self.enableAutoRange()

    def set_total(self, total: int | None) -> None:
        """The run's step count: while the view follows the data, x spans 0..total (no re-layout per step)."""
        if total and total != self.total_steps:
            self.total_steps = total
            vb = self.getPlotItem().vb
            if vb.autoRangeEnabled()[0]:
                lo = min(0.0, float(self.train_s.x[0])) if self.train_s.n else 0.0
                self.setXRange(lo, total, padding=0.02)
                vb.enableAutoRange(x=False, y=True)

    def fit(self):
        """Show everything (after zooming or panning)."""
        self.enableAutoRange()
        if self.total_steps:
            t, total = self.total_steps, self.total_steps
            self.total_steps = None
            self.set_total(total or t)

    def add_step(self, step: int, loss: float, lr: float | None = None) -> None:
        if self.train_s.n and step <= self.train_s.x[self.train_s.n - 1]:
            self._cut_from(step)
        self.train_s.append(step, loss)
        if lr is not None:
            self.lr_s.append(step, lr)
        self._push_ema(loss)
        self._dirty = True

    def add_valid(self, step: int, loss: float) -> None:
        self.valid_s.cut_from(step)
        self.valid_s.append(step, loss)
        self._dirty = True

    def add(self, name: str, step: int, value: float) -> None:
        """A metric by name (train_loss, valid_loss, learning_rate), as Events.metric reports it."""
        if name == "train_loss":
            self.add_step(step, value)
        elif name == "valid_loss":
            self.add_valid(step, value)
        elif name in self.right_s:
            self.right_s[name].cut_from(step)
            self.right_s[name].append(step, value)
            self._dirty = True

    def load_metrics(self, metrics: list[dict]) -> None:
        """Everything a run folder's metrics.jsonl holds (a resumed run's curve so far)."""
        from core.runs import series

        self.clear_data()
        xs, ys = series(metrics, "train_loss")
        self.train_s.extend(xs, ys)
        for name, s in self.right_s.items():
            s.extend(*series(metrics, name))
        self.valid_s.extend(*series(metrics, "valid_loss"))
        self._recompute_ema()
        self._redraw()

    def _cut_from(self, step):
        self.train_s.cut_from(step)
        for s in self.right_s.values():
            s.cut_from(step)
        self._recompute_ema()

    def _push_ema(self, v: float):
        n = self.train_s.n
        if len(self._ema) < n:
            self._ema = np.concatenate([self._ema, np.zeros(max(n, len(self._ema)))])
        w = self.smoothing
        self._acc = w * self._acc + (1 - w) * v
        self._norm = w * self._norm + (1 - w)
        self._ema[n - 1] = self._acc / self._norm if self._norm else v

    def _recompute_ema(self):
        ys = self.train_s.ys
        self._ema = np.zeros(max(1024, 2 * len(ys)))
        self._acc = self._norm = 0.0
        w = self.smoothing
        for i, v in enumerate(ys):
            self._acc = w * self._acc + (1 - w) * v
            self._norm = w * self._norm + (1 - w)
            self._ema[i] = self._acc / self._norm if self._norm else v
        self._dirty = True

    def set_smoothing(self, weight: float) -> None:
        self.smoothing = min(0.999, max(0.0, float(weight)))
        self._recompute_ema()
        self._redraw()

    RIGHT_LABELS = {"learning_rate": "learning rate", "reward_margin": "reward margin (chosen - rejected)",
                    "reward_accuracy": "chosen answer wins (share)"}

    def show_right(self, name: str) -> None:
        """Which series the right-hand axis shows (learning_rate, reward_margin, reward_accuracy)."""
        self.right = name if name in self.right_s else "learning_rate"
        self.getPlotItem().getAxis("right").setLabel(self.RIGHT_LABELS[self.right])
        self.flush()

    def has_series(self, name: str) -> bool:
        return self.right_s.get(name) is not None and self.right_s[name].n > 0

    def show_learning_rate(self, on: bool) -> None:
        self.lr_view.setVisible(on)
        self.getPlotItem().showAxis("right", on)

    # -- drawing (throttled)
    def _redraw(self):
        if not self._dirty:
            return
        self._dirty = False
        self.redraws += 1
        t = self.train_s
        self.raw_curve.setData(t.xs, t.ys)
        self.ema_curve.setData(t.xs, self._ema[: t.n])
        self.valid_curve.setData(self.valid_s.xs, self.valid_s.ys)
        best = self.best_point
        self.best_marker.setData([best[0]] if best else [], [best[1]] if best else [])
        r = self.right_s[self.right]
        self.lr_curve.setData(r.xs, r.ys)
        if self.right == "learning_rate" and r.n:
            # from 0 to the peak: a constant rate was drawn in the middle of a -400..400 axis
            hi = float(np.nanmax(r.ys))
            self.lr_view.setYRange(0.0, hi * 1.08 if hi > 0 else 1.0, padding=0)
        elif self.right == "learning_rate":
            self.lr_view.enableAutoRange(y=True)

    def flush(self):
        """Draw what arrived now (tests, screenshots)."""
        self._dirty = True
        self._redraw()

    # -- for tests and old callers
    @property
    def train(self) -> tuple[list[int], list[float]]:
        return [int(x) for x in self.train_s.xs], [float(y) for y in self.train_s.ys]

    @property
    def valid(self) -> tuple[list[int], list[float]]:
        return [int(x) for x in self.valid_s.xs], [float(y) for y in self.valid_s.ys]

    @property
    def best_point(self) -> tuple[int, float] | None:
        """(step, validation loss) of the best validation so far (the first of equal ones), as the trainer keeps it."""
        if not self.valid_s.n:
            return None
        i = int(np.argmin(self.valid_s.ys))
        return int(self.valid_s.xs[i]), float(self.valid_s.ys[i])


class ComparePlot(_ThemedPlot):
    """Several runs' curves on one plot: each run's smoothed training loss, and its validation loss dashed."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("history.plot")
        self.setLabel("bottom", "step")
        self.setLabel("left", "loss")
        self.legend = self.addLegend(offset=(-10, 10))
        self._apply_palette()  # the legend's text and background in this appearance
        self.getPlotItem().setClipToView(True)
        self.getPlotItem().setDownsampling(auto=True, mode="peak")
        self.runs: list[str] = []
        self.best_points: list[tuple[str, int, float]] = []  # (run, step, validation loss) of each run's best
        self.best_markers: list = []

    def show_runs(self, runs: list[tuple[str, list, list, list, list]], smoothing: float = 0.9) -> None:
        """``runs``: (label, train steps, train losses, valid steps, valid losses) per run. Each run's best step
        (its lowest validation loss, the first of equal ones, as the trainer keeps it) is marked with a star."""
        self.clear()
        self.legend.clear()
        self.runs = [r[0] for r in runs]
        self.best_points, self.best_markers = [], []
        for i, (label, tx, ty, vx, vy) in enumerate(runs):
            col = RUN_COLORS[i % len(RUN_COLORS)]
            if len(tx):
                ys = ema(ty, smoothing) if len(runs) > 1 or smoothing else np.asarray(ty, float)
                self.plot(np.asarray(tx, float), ys, pen=pg.mkPen(col, width=2), name=label)
                if len(runs) == 1:  # one run: its raw curve behind, faint
                    faint = QColor(col)
                    faint.setAlpha(70)
                    self.plot(np.asarray(tx, float), np.asarray(ty, float), pen=pg.mkPen(faint, width=1))
            if len(vx):
                self.plot(np.asarray(vx, float), np.asarray(vy, float), pen=pg.mkPen(col, width=1.2,
                          style=Qt.PenStyle.DashLine), symbol="o", symbolSize=6, symbolBrush=col,
                          symbolPen=pg.mkPen(col), name=f"{label} (validation)" if len(runs) > 1 else "validation")
                vals = np.asarray(vy, float)
                if np.isfinite(vals).any():
                    i = int(np.nanargmin(np.where(np.isfinite(vals), vals, np.nan)))
                    self.best_points.append((label, int(vx[i]), float(vals[i])))
                    self.best_markers.append(self.plot(
                        [float(vx[i])], [float(vals[i])], pen=None, symbol="star", symbolSize=17, symbolBrush=col,
                        symbolPen=pg.mkPen(self.palette().color(self.palette().ColorRole.Text), width=1.2)))
        if self.best_markers:  # one legend entry for the stars, after the runs' own
            self.legend.addItem(self.best_markers[0], "best step (lowest validation loss)")
        self.enableAutoRange()


def sparkline(values, width: int = 96, height: int = 22, palette: QPalette | None = None,
              color: str = TRAIN_COLOR) -> QPixmap:
    """A small picture of a loss curve (smoothed, min to max), for run lists."""
    pm = QPixmap(width, height)
    pm.fill(Qt.GlobalColor.transparent)
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(vals) < 2:
        return pm
    if len(vals) > width * 2:  # one point per half pixel is plenty
        idx = np.linspace(0, len(vals) - 1, width * 2).astype(int)
        vals = list(np.asarray(vals)[idx])
    ys = ema(vals, 0.6 if len(vals) > 20 else 0.0)
    lo, hi = float(ys.min()), float(ys.max())
    span = hi - lo or 1.0
    path = QPainterPath()
    for i, v in enumerate(ys):
        pt = QPointF(1 + i * (width - 2) / (len(ys) - 1), 2 + (height - 4) * (1 - (v - lo) / span))
        if i == 0:
            path.moveTo(pt)
        else:
            path.lineTo(pt)
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    pen = QPen(QColor(color), 1.6)
    p.setPen(pen)
    p.drawPath(path)
    if palette is not None:
        p.setPen(QPen(theme.muted(palette), 1, Qt.PenStyle.DotLine))
        p.drawLine(QRectF(pm.rect()).bottomLeft(), QRectF(pm.rect()).bottomRight())
    p.end()
    return pm
