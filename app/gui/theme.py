"""Colours derived from the palette, so light and dark appearance both follow the system.

Nothing here hard-codes a light or dark colour for a surface: surfaces come from palette
roles (Window, Base, AlternateBase, Highlight, PlaceholderText...), and the few accent
colours (error, warning, success, chat roles) are picked per appearance and blended into
the current background. Widgets that render HTML call these again on a palette change.
"""
from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

# Accent hues that read on both backgrounds once blended (Tailwind's 600 / 400 steps).
_ACCENTS = {
    "error": ("#b91c1c", "#f87171"),
    "warning": ("#b45309", "#fbbf24"),
    "ok": ("#15803d", "#4ade80"),
    "user": ("#2563eb", "#60a5fa"),
    "assistant": ("#7c3aed", "#c4b5fd"),
    "system": ("#6b7280", "#9ca3af"),
    "tool": ("#0f766e", "#5eead4"),
}


def palette(widget=None) -> QPalette:
    if widget is not None:
        return widget.palette()
    app = QApplication.instance()
    return app.palette() if app is not None else QPalette()


def is_dark(pal: QPalette | None = None) -> bool:
    pal = pal or palette()
    return pal.color(QPalette.ColorRole.Window).lightness() < 128


def accent(name: str, pal: QPalette | None = None) -> QColor:
    light, dark = _ACCENTS[name]
    return QColor(dark if is_dark(pal) else light)


def mix(a: QColor, b: QColor, t: float) -> QColor:
    """``a`` moved ``t`` of the way towards ``b``."""
    return QColor(round(a.red() + (b.red() - a.red()) * t), round(a.green() + (b.green() - a.green()) * t),
                  round(a.blue() + (b.blue() - a.blue()) * t))


def tint(name: str, pal: QPalette | None = None, strength: float = 0.14) -> QColor:
    """A background for a block of role ``name``: the accent blended into the Base colour."""
    pal = pal or palette()
    return mix(pal.color(QPalette.ColorRole.Base), accent(name, pal), strength)


def role(pal: QPalette, r: QPalette.ColorRole) -> QColor:
    return pal.color(r)


def text(pal: QPalette | None = None) -> QColor:
    return (pal or palette()).color(QPalette.ColorRole.Text)


def muted(pal: QPalette | None = None) -> QColor:
    """Secondary text: the placeholder colour (grey in both appearances)."""
    pal = pal or palette()
    base = pal.color(QPalette.ColorRole.Base)
    c = pal.color(QPalette.ColorRole.PlaceholderText)
    if not c.isValid():
        return mix(text(pal), base, 0.45)
    if c.alpha() < 255:  # Qt's default is the text colour at half opacity: flatten it (CSS needs #rrggbb)
        c = mix(base, QColor(c.red(), c.green(), c.blue()), c.alphaF())
    return c


def span(text_html: str, name: str, pal: QPalette | None = None, bold: bool = False) -> str:
    weight = "font-weight:600;" if bold else ""
    return f"<span style='color:{accent(name, pal).name()};{weight}'>{text_html}</span>"


def dark_palette() -> QPalette:
    """A dark palette like the one macOS or a dark desktop theme gives Qt (for screenshots and tests:
    the offscreen platform has no system appearance to follow)."""
    p = QPalette()
    C, G = QPalette.ColorRole, QPalette.ColorGroup
    window, base, alt, txt = QColor("#1e1e1e"), QColor("#262626"), QColor("#2e2e2e"), QColor("#e5e5e5")
    for group in (G.Active, G.Inactive):
        p.setColor(group, C.Window, window)
        p.setColor(group, C.WindowText, txt)
        p.setColor(group, C.Base, base)
        p.setColor(group, C.AlternateBase, alt)
        p.setColor(group, C.ToolTipBase, QColor("#333333"))
        p.setColor(group, C.ToolTipText, txt)
        p.setColor(group, C.PlaceholderText, QColor("#8a8a8a"))
        p.setColor(group, C.Text, txt)
        p.setColor(group, C.Button, QColor("#333333"))
        p.setColor(group, C.ButtonText, txt)
        p.setColor(group, C.BrightText, QColor("#ff6b6b"))
        p.setColor(group, C.Light, QColor("#4a4a4a"))
        p.setColor(group, C.Midlight, QColor("#3a3a3a"))
        p.setColor(group, C.Mid, QColor("#505050"))
        p.setColor(group, C.Dark, QColor("#151515"))
        p.setColor(group, C.Shadow, QColor("#000000"))
        p.setColor(group, C.Highlight, QColor("#2f6fd6"))
        p.setColor(group, C.HighlightedText, QColor("#ffffff"))
        p.setColor(group, C.Link, QColor("#6ea8fe"))
        p.setColor(group, C.LinkVisited, QColor("#b197fc"))
    for r in (C.WindowText, C.Text, C.ButtonText):
        p.setColor(G.Disabled, r, QColor("#6b6b6b"))
    for r, c in ((C.Window, window), (C.Base, window), (C.Button, QColor("#2a2a2a")),
                 (C.Highlight, QColor("#3a3a3a")), (C.PlaceholderText, QColor("#5a5a5a"))):
        p.setColor(G.Disabled, r, c)
    return p


def link_colours(text: str, pal: QPalette) -> str:
    """Rich text whose links carry ``pal``'s link colour. A QLabel fixes its links' colour when the text
    is set: set the text again through this after a palette change (dark blue on dark otherwise)."""
    colour = pal.color(QPalette.ColorRole.Link).name()
    return text.replace("<a href=", f"<a style='color:{colour}' href=")
