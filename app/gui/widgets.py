"""Reusable widgets: the drop zone, the step list, the loss plot and the token-length histogram.

Colours come from the palette (app.gui.theme), so both appearances work and a change of
system appearance while the app runs repaints them right.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPointF, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPalette, QPen
from PySide6.QtWidgets import (QFrame, QLabel, QListWidget, QListWidgetItem, QPushButton, QStyle,
                               QStyledItemDelegate, QVBoxLayout, QWidget)
from superqt import QCollapsible

from app.gui import theme
from core.data import KNOWN_SUFFIXES


def dropped_paths(mime) -> list[Path]:
    if not mime.hasUrls():
        return []
    return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()]


def acceptable(paths: list[Path]) -> bool:
    """Files the window takes: dataset files and folders (a folder may also be a model)."""
    return bool(paths) and all(p.is_dir() or p.suffix.lower() in KNOWN_SUFFIXES for p in paths)


def _pen(color: QColor, width: float = 1.0) -> QPen:
    return pg.mkPen(color, width=width)


class Panel(QFrame):
    """A rounded box painted from the palette (no style sheet: a style sheet would pin the colours it
    was given, and the box would stay light when the system turns dark)."""

    def __init__(self, fill: QPalette.ColorRole = QPalette.ColorRole.AlternateBase, radius: float = 8,
                 parent=None):
        super().__init__(parent)
        self.fill_role = fill
        self.radius = radius
        self.tint = 0.0  # how far the fill moves towards the highlight colour
        self.border_width = 0.0
        self.border_role: str | None = None  # "highlight" / "muted" / None (no border)
        self.dashed = False
        self.fill_color: QColor | None = None  # a colour of its own (a result box), else the palette's

    def paintEvent(self, event):
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        fill = self.fill_color if self.fill_color is not None else pal.color(self.fill_role)
        if self.tint:
            fill = theme.mix(fill, pal.color(QPalette.ColorRole.Highlight), self.tint)
        if self.border_role and self.border_width:
            col = pal.color(QPalette.ColorRole.Highlight) if self.border_role == "highlight" else theme.mix(
                pal.color(QPalette.ColorRole.Base), theme.muted(pal), 0.6 if self.border_role == "soft" else 1.0)
            pen = QPen(col, self.border_width, Qt.PenStyle.DashLine if self.dashed else Qt.PenStyle.SolidLine)
            p.setPen(pen)
        else:
            p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(fill)
        m = max(1.0, self.border_width)
        p.drawRoundedRect(QRectF(self.rect()).adjusted(m / 2, m / 2, -m / 2, -m / 2), self.radius, self.radius)
        p.end()


class DropZone(Panel):
    """A large target for dataset files and folders; a click opens the file dialog."""

    files_dropped = Signal(list)
    clicked = Signal()

    TITLE = "Drop your examples here"
    DETAIL = "JSONL, JSON, CSV, TSV or TXT files, or a folder (train / valid files are used as the split)"

    def __init__(self, parent=None):
        super().__init__(QPalette.ColorRole.Base, 12, parent)
        self.setAcceptDrops(True)
        self.setObjectName("DropZone")
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Drop files or a folder here, or click to choose files")
        self.border_role, self.border_width, self.dashed = "muted", 2.0, True
        self.title = QLabel(self.TITLE)
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title.setWordWrap(True)
        f = self.title.font()
        f.setPointSizeF(f.pointSizeF() * 1.35)
        f.setBold(True)
        self.title.setFont(f)
        self.detail = QLabel()
        self.detail.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.detail.setWordWrap(True)
        self.choose_btn = QPushButton("Choose files...")
        self.choose_btn.clicked.connect(self.clicked)
        lay = QVBoxLayout(self)
        lay.addStretch(1)
        lay.addWidget(self.title)
        lay.addWidget(self.detail)
        lay.addWidget(self.choose_btn, 0, Qt.AlignmentFlag.AlignHCenter)
        lay.addStretch(1)
        self._hover = False
        self.set_compact(False)

    @property
    def label(self) -> QLabel:  # the old single label
        return self.title

    def set_compact(self, compact: bool, text: str | None = None):
        """Large while there is no dataset; a slim bar once one is shown."""
        self.compact = compact
        self.detail.setVisible(not compact)
        self.choose_btn.setVisible(not compact)
        self.title.setText(text or ("Drop other files here to replace these examples" if compact else self.TITLE))
        self.setMinimumHeight(44 if compact else 200)
        self.setMaximumHeight(56 if compact else 16777215)
        self._restyle()

    def _restyle(self):
        self.border_role = "highlight" if self._hover else "muted"
        self.tint = 0.12 if self._hover else 0.0
        self.detail.setText(f"<span style='color:{theme.muted(self.palette()).name()}'>{self.DETAIL}</span>")
        self.update()

    def changeEvent(self, event):
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self._restyle()
        super().changeEvent(event)

    def _set_hover(self, on: bool):
        self._hover = on
        self._restyle()

    def mouseReleaseEvent(self, event):
        if event.button() == Qt.MouseButton.LeftButton and self.rect().contains(event.position().toPoint()):
            self.clicked.emit()
        super().mouseReleaseEvent(event)

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
        else:
            event.ignore()


def panel_label(text: str = "", name: str = "") -> tuple[Panel, QLabel]:
    """A word-wrapped label on a rounded AlternateBase box: (box, label)."""
    box = Panel()
    lab = QLabel(text)
    lab.setWordWrap(True)
    lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    if name:
        lab.setObjectName(name)
    lay = QVBoxLayout(box)
    lay.setContentsMargins(10, 8, 10, 8)
    lay.addWidget(lab)
    return box, lab


# --------------------------------------------------------------------------- the steps

STATE_ROLE = Qt.ItemDataRole.UserRole + 1  # "done" / "ready" / "blocked" / "busy"
DETAIL_ROLE = Qt.ItemDataRole.UserRole + 2  # one line under the title


class StepDelegate(QStyledItemDelegate):
    """A step: a numbered badge (a check mark when done), the title, and a line saying its state."""

    def sizeHint(self, option, index):
        return QSize(option.rect.width(), 50)

    def paint(self, painter: QPainter, option, index):
        painter.save()
        pal = option.palette
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        if selected:
            painter.fillRect(option.rect, pal.color(QPalette.ColorRole.Highlight))
        elif option.state & QStyle.StateFlag.State_MouseOver:
            painter.fillRect(option.rect, theme.mix(pal.color(QPalette.ColorRole.Base),
                                                    pal.color(QPalette.ColorRole.Highlight), 0.12))
        state = index.data(STATE_ROLE) or "ready"
        fg = pal.color(QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text)
        sub = fg if selected else theme.muted(pal)
        if state == "blocked" and not selected:
            fg = theme.muted(pal)
        r = option.rect
        badge = QRectF(r.left() + 10, r.center().y() - 12, 24, 24)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        accent = pal.color(QPalette.ColorRole.Highlight)
        if selected:
            accent = pal.color(QPalette.ColorRole.HighlightedText)
        if state == "done":
            done = theme.accent("ok", pal) if not selected else accent
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(done)
            painter.drawEllipse(badge)
            pen = QPen(pal.color(QPalette.ColorRole.Base) if not selected else pal.color(QPalette.ColorRole.Highlight),
                       2.4)
            pen.setCapStyle(Qt.PenCapStyle.RoundCap)
            painter.setPen(pen)
            c = badge.center()
            painter.drawPolyline([c + QPointF(-5.5, 0.5), c + QPointF(-1.5, 4.5),
                                  c + QPointF(5.5, -4.0)])
        else:
            painter.setBrush(Qt.BrushStyle.NoBrush)
            col = accent if state in ("ready", "busy") else theme.muted(pal)
            pen = QPen(col, 1.6)
            if state == "blocked":
                pen.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(pen)
            painter.drawEllipse(badge.adjusted(1, 1, -1, -1))
            painter.setPen(col)
            f = QFont(option.font)
            f.setBold(True)
            painter.setFont(f)
            painter.drawText(badge, Qt.AlignmentFlag.AlignCenter, str(index.row() + 1))
        text_left = int(badge.right()) + 10
        title_font = QFont(option.font)
        title_font.setBold(True)
        painter.setFont(title_font)
        painter.setPen(fg)
        left_middle = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        painter.drawText(QRect(text_left, r.top() + 6, r.right() - text_left - 4, 20), left_middle,
                         index.data(Qt.ItemDataRole.DisplayRole))
        small = QFont(option.font)
        small.setPointSizeF(max(7.0, option.font.pointSizeF() * 0.85))
        painter.setFont(small)
        painter.setPen(sub)
        detail = painter.fontMetrics().elidedText(index.data(DETAIL_ROLE) or "", Qt.TextElideMode.ElideRight,
                                                  r.right() - text_left - 6)
        painter.drawText(QRect(text_left, r.top() + 25, r.right() - text_left - 4, 18), left_middle, detail)
        painter.restore()


class StepList(QListWidget):
    def __init__(self, steps: list[str], parent=None):
        super().__init__(parent)
        self.setItemDelegate(StepDelegate(self))
        self.setMouseTracking(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setAttribute(Qt.WidgetAttribute.WA_MacShowFocusRect, False)
        for s in steps:
            item = QListWidgetItem(s)
            item.setData(STATE_ROLE, "ready")
            self.addItem(item)
        self.setFixedHeight(50 * len(steps) + 6)

    def set_state(self, row: int, state: str, detail: str, tooltip: str):
        item = self.item(row)
        item.setData(STATE_ROLE, state)
        item.setData(DETAIL_ROLE, detail)
        item.setToolTip(tooltip)

    def state(self, row: int) -> str:
        return self.item(row).data(STATE_ROLE)


# --------------------------------------------------------------------------- plots

class _ThemedPlot(pg.PlotWidget):
    """A pyqtgraph plot drawn on the window's background, with axes in the text colour."""

    def __init__(self, parent=None):
        self._ready = False  # pyqtgraph's constructor changes the palette before the plot exists
        super().__init__(parent)
        self.setBackground(None)
        self.showGrid(x=True, y=True, alpha=0.25)
        self._ready = True
        self._apply_palette()

    def _apply_palette(self):
        pal = self.palette()
        fg = theme.muted(pal)
        txt = pal.color(QPalette.ColorRole.Text)
        for name in ("left", "bottom"):
            ax = self.getAxis(name)
            ax.setPen(_pen(fg))
            ax.setTextPen(_pen(txt))
            if ax.labelText:
                ax.setLabel(ax.labelText, units=ax.labelUnits, color=txt.name())
        legend = self.getPlotItem().legend
        if legend is not None:
            legend.setLabelTextColor(txt)
            for _sample, label in legend.items:  # pyqtgraph keeps the new colour for the next text: redraw it now
                label.setText(label.text, color=txt)
            back = QColor(pal.color(QPalette.ColorRole.Base))
            back.setAlpha(200)
            legend.setBrush(pg.mkBrush(back))  # the legend readable where a curve or a star runs under it
        # pyqtgraph caches the painted background: drop it, or the old appearance stays behind the plot
        self.resetCachedContent()
        self.viewport().update()

    def changeEvent(self, event):
        if self._ready and event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self._apply_palette()
            self.palette_changed()
        super().changeEvent(event)

    def palette_changed(self):
        pass


class TokenHistogram(_ThemedPlot):
    """How many examples have how many tokens; the maximum length as a line, longer bars in warning colour."""

    BINS = 40

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setLabel("bottom", "tokens per example")
        self.setLabel("left", "examples")
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        self.setMenuEnabled(False)
        self.lengths = np.zeros(0, dtype=np.int64)
        self.max_len = 512
        self.bars_ok: pg.BarGraphItem | None = None
        self.bars_over: pg.BarGraphItem | None = None
        self.max_line = pg.InfiniteLine(angle=90, movable=False, label="max {value:.0f}",
                                        labelOpts={"position": 0.95, "anchors": [(1, 0), (1, 0)]})
        self.max_line.setZValue(10)  # the line and its label in front of the bars
        self.addItem(self.max_line)
        self._apply_palette()
        self.palette_changed()

    def palette_changed(self):
        pal = self.palette()
        warn = theme.accent("error", pal)
        if hasattr(self, "max_line"):
            self.max_line.setPen(pg.mkPen(warn, width=2, style=Qt.PenStyle.DashLine))
            self.max_line.label.setColor(warn)
            bg = QColor(pal.color(QPalette.ColorRole.Base))
            bg.setAlpha(230)
            self.max_line.label.fill = pg.mkBrush(bg)  # readable over the bars
            self.max_line.label.update()
            if len(self.lengths):
                self._draw()

    def set_lengths(self, lengths, max_len: int):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_len = int(max_len)
        self._draw()

    def set_max_len(self, max_len: int):
        self.max_len = int(max_len)
        self._draw()

    @property
    def truncated(self) -> int:
        return int((self.lengths > self.max_len).sum())

    def _draw(self):
        for b in (self.bars_ok, self.bars_over):
            if b is not None:
                self.removeItem(b)
        self.bars_ok = self.bars_over = None
        self.max_line.setValue(self.max_len)
        if not len(self.lengths):
            return
        hi = max(int(self.lengths.max()), self.max_len)
        width = max(1, int(np.ceil(hi * 1.04 / self.BINS)))
        # bins aligned so one starts at max_len + 1: a bar is either all kept or all cut off
        first = (self.max_len + 1) % width
        edges = np.arange(first - width if first else 0, hi + 2 * width, width)
        counts, edges = np.histogram(self.lengths, bins=edges)
        centres = (edges[:-1] + edges[1:]) / 2
        over = edges[:-1] > self.max_len
        pal = self.palette()
        ok_col = pal.color(QPalette.ColorRole.Highlight)
        bad_col = theme.accent("error", pal)
        if (~over).any():
            self.bars_ok = pg.BarGraphItem(x=centres[~over], height=counts[~over], width=width * 0.9,
                                           brush=ok_col, pen=pg.mkPen(None))
            self.addItem(self.bars_ok)
        if over.any() and counts[over].any():
            self.bars_over = pg.BarGraphItem(x=centres[over], height=counts[over], width=width * 0.9,
                                             brush=bad_col, pen=pg.mkPen(None))
            self.addItem(self.bars_over)
        self.setXRange(0, max(edges[-1], self.max_len * 1.04), padding=0.02)
        self.setYRange(0, max(1, int(counts.max())) * 1.1, padding=0)


class DropOverlay(QWidget):
    """Shown over the window while files are dragged over it."""

    def __init__(self, parent: QWidget):
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.text = "Drop to add"
        self.hide()

    def show_over(self, text: str):
        self.text = text
        self.setGeometry(self.parentWidget().rect())
        self.raise_()
        self.show()

    def paintEvent(self, event):
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        hl = pal.color(QPalette.ColorRole.Highlight)
        bg = QColor(pal.color(QPalette.ColorRole.Window))
        bg.setAlpha(215)
        p.fillRect(self.rect(), bg)
        pen = QPen(hl, 3, Qt.PenStyle.DashLine)
        p.setPen(pen)
        p.drawRoundedRect(QRectF(self.rect()).adjusted(12, 12, -12, -12), 16, 16)
        f = QFont(self.font())
        f.setPointSizeF(f.pointSizeF() * 1.6)
        f.setBold(True)
        p.setFont(f)
        p.setPen(pal.color(QPalette.ColorRole.Text))
        p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.text)
        p.end()


# --------------------------------------------------------------------------- sections

ARROWS = {"collapsedIcon": "\u25b6", "expandedIcon": "\u25bc"}  # ▶ closed, ▼ open


class Section(QCollapsible):
    """A section that folds away (superqt's QCollapsible) with ▶/▼ arrows, a header in the window's text colour
    in either appearance (the header button's style sheet kept its first palette: black on a dark window), and
    no empty band under it while closed."""

    def __init__(self, title: str, parent=None):
        super().__init__(title, parent, **ARROWS)
        self.layout().setContentsMargins(0, 2, 0, 2)
        self.layout().setSpacing(0)
        self._recolour()

    def _recolour(self):
        btn = self._toggle_btn
        colour = theme.text(self.palette())
        pal = btn.palette()
        for r in (QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
            pal.setColor(r, colour)
        btn.setPalette(pal)  # the arrows are drawn in the button's WindowText
        btn.setStyleSheet(f"text-align: left; border: none; outline: none; padding: 3px 2px; color: {colour.name()};")
        self.setCollapsedIcon(ARROWS["collapsedIcon"])
        self.setExpandedIcon(ARROWS["expandedIcon"])

    def changeEvent(self, event):
        super().changeEvent(event)
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self._recolour()


class WrapLabel(QLabel):
    """A word-wrapped label that asks for the height its lines take at its width: a layout gives a wrapped
    label the height it needs but counts only one line in its minimum, so where room is short the widget
    above was squeezed under its own minimum and the two overlapped (the token histogram's axis title under
    the Max length row)."""

    def __init__(self, text: str = "", parent=None):
        super().__init__(text, parent)
        self.setWordWrap(True)

    def _fit(self):
        if self.width() > 0:
            need = self.heightForWidth(self.width())
            if need > 0 and need != self.minimumHeight():
                self.setMinimumHeight(need)

    def setText(self, text: str):
        super().setText(text)
        self._fit()

    def resizeEvent(self, event):
        super().resizeEvent(event)
        self._fit()


def fill_adapter_choices(combo, run_dir) -> None:
    """Show a run's adapters (core.runs.adapter_choices: best and final, with their steps) in ``combo``,
    each item's data its "best" / "final". The choice made stays chosen; no change signal is sent when
    only the labels change (Try and Export both use this)."""
    from PySide6.QtWidgets import QComboBox

    from core.runs import adapter_choices

    # the labels are long ("Best adapter (lowest validation loss, step 120)"): the closed box is as wide as a
    # short one, so the page keeps its width; the open list shows the whole label
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(18)
    choices = adapter_choices(run_dir)
    if [combo.itemData(i) for i in range(combo.count())] == [c.which for c in choices]:
        for i, c in enumerate(choices):
            combo.setItemText(i, c.label)
        return
    keep = combo.currentData()
    blocked = combo.blockSignals(True)
    combo.clear()
    for c in choices:
        combo.addItem(c.label, c.which)
    combo.setCurrentIndex(max(0, combo.findData(keep)) if keep is not None else 0)
    combo.blockSignals(blocked)
