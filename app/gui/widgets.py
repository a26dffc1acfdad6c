"""Reusable widgets: the drop zone and the live loss plot."""
from __future__ import annotations

from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QLabel, QVBoxLayout

from core.data import KNOWN_SUFFIXES


def dropped_paths(mime) -> list[Path]:
    if not mime.hasUrls():
        return []
    return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()]


def acceptable(paths: list[Path]) -> bool:
    return bool(paths) and all(p.is_dir() or p.suffix.lower() in KNOWN_SUFFIXES for p in paths)


class DropZone(QFrame):
    """A large target for dataset files and folders."""

    files_dropped = Signal(list)

    def __init__(self, text: str = "Drop dataset files here\n(JSONL, JSON, CSV, TSV, TXT or a folder)", parent=None):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.setObjectName("DropZone")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setMinimumHeight(120)
        self.label = QLabel(text)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay = QVBoxLayout(self)
        lay.addWidget(self.label)
        self._set_hover(False)

    def _set_hover(self, on: bool):
        self.setStyleSheet("#DropZone { border: 2px dashed %s; border-radius: 12px; }" % ("#3b82f6" if on else "#9ca3af"))

    def dragEnterEvent(self, event):
        if acceptable(dropped_paths(event.mimeData())):
            self._set_hover(True)
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragLeaveEvent(self, event):
        self._set_hover(False)

    def dropEvent(self, event):
        self._set_hover(False)
        paths = dropped_paths(event.mimeData())
        if acceptable(paths):
            event.acceptProposedAction()
            self.files_dropped.emit(paths)


class LossPlot(pg.PlotWidget):
    """Training and validation loss against step; points are added as metrics arrive."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setBackground(None)
        self.showGrid(x=True, y=True, alpha=0.3)
        self.setLabel("bottom", "step")
        self.setLabel("left", "loss")
        self.addLegend()
        self.train_curve = self.plot([], [], pen=pg.mkPen("#3b82f6", width=2), name="training")
        self.valid_curve = self.plot([], [], pen=pg.mkPen("#f97316", width=2), symbol="o", symbolSize=6,
                                     name="validation")
        self.clear_data()

    def clear_data(self):
        self.train = ([], [])
        self.valid = ([], [])
        self.train_curve.setData([], [])
        self.valid_curve.setData([], [])

    def add(self, name: str, step: int, value: float):
        if name == "train_loss":
            self.train[0].append(step)
            self.train[1].append(value)
            self.train_curve.setData(*self.train)
        elif name == "valid_loss":
            self.valid[0].append(step)
            self.valid[1].append(value)
            self.valid_curve.setData(*self.valid)
