"""Draw Tuneloom's app icon and write the macOS .icns.

    python resources/icons/make_icons.py          (QT_QPA_PLATFORM=offscreen works)

The icon is drawn here, in code, with QPainter: a rounded square on Apple's icon grid (an 824 px
body on a 1024 px canvas), the warp threads of a loom, and one warm weft thread woven through
them along a falling loss curve: what Tuneloom does. Small sizes (16 and 32 px) get fewer,
thicker threads so they stay legible instead of being scaled down from 1024.

Writes, next to this file:
  Tuneloom.iconset/icon_<n>x<n>[@2x].png   the PNG sources, named as `iconutil` expects
                                           (on a Mac, `iconutil -c icns Tuneloom.iconset`
                                           makes the same .icns)
  Tuneloom.icns                            the app icon (PNG entries; macOS 10.7 and later)
  Tuneloom.png                             512 px, the window icon on Linux and Windows

The .icns container is simple enough to write by hand (no iconutil on Linux, and Pillow is not a
dependency): the magic ``icns``, the total length, then one ``(type, length, png bytes)`` entry
per size, big-endian.
"""
from __future__ import annotations

import math
import os
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# iconset file name -> (pixel size, ICNS type code). Apple's PNG-capable types.
ICONSET = {
    "icon_16x16.png": (16, b"icp4"),
    "icon_16x16@2x.png": (32, b"ic11"),
    "icon_32x32.png": (32, b"icp5"),
    "icon_32x32@2x.png": (64, b"ic12"),
    "icon_128x128.png": (128, b"ic07"),
    "icon_128x128@2x.png": (256, b"ic13"),
    "icon_256x256.png": (256, b"ic08"),
    "icon_256x256@2x.png": (512, b"ic14"),
    "icon_512x512.png": (512, b"ic09"),
    "icon_512x512@2x.png": (1024, b"ic10"),
}


def _loss(t: float) -> float:
    """A training-loss shape on [0, 1]: fast fall, long tail, a little noise-like wiggle."""
    return 0.12 + 0.78 * math.exp(-4.2 * t) + 0.025 * math.sin(19 * t) * (1 - t)


def draw(size: int):
    """Render the icon at ``size`` px; returns a QImage."""
    from PySide6.QtCore import QPointF, QRectF, Qt
    from PySide6.QtGui import QColor, QImage, QLinearGradient, QPainter, QPainterPath, QPen

    img = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    img.fill(Qt.GlobalColor.transparent)
    p = QPainter(img)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    s = size / 1024.0
    p.scale(s, s)
    small = size <= 32

    # body on Apple's grid: 824 px square, corner radius ~ 22.5 %
    body = QRectF(100, 100, 824, 824) if not small else QRectF(40, 40, 944, 944)
    radius = 185 if not small else 210
    shape = QPainterPath()
    shape.addRoundedRect(body, radius, radius)

    if not small:  # soft drop shadow below the body
        for i, alpha in enumerate((28, 18, 10)):
            sh = QPainterPath()
            sh.addRoundedRect(body.translated(0, 10 + 8 * i).adjusted(-4 * i, -4 * i, 4 * i, 4 * i), radius, radius)
            p.fillPath(sh, QColor(0, 0, 0, alpha))

    bg = QLinearGradient(body.topLeft(), body.bottomRight())
    bg.setColorAt(0.0, QColor("#3d3a9e"))
    bg.setColorAt(0.55, QColor("#2b2f7a"))
    bg.setColorAt(1.0, QColor("#14194a"))
    p.fillPath(shape, bg)
    p.setClipPath(shape)

    # warp threads
    n_warp = 3 if small else 7
    left, right = body.left() + body.width() * 0.14, body.right() - body.width() * 0.14
    xs = [left + (right - left) * i / (n_warp - 1) for i in range(n_warp)]
    warp_w = 70 if small else 26
    warp = QColor(232, 236, 255, 150 if small else 105)

    def draw_warp(x: float, y0: float, y1: float, color=warp):
        pen = QPen(color, warp_w, Qt.PenStyle.SolidLine, Qt.PenCapStyle.FlatCap)
        p.setPen(pen)
        p.drawLine(QPointF(x, y0), QPointF(x, y1))

    for x in xs:
        draw_warp(x, body.top(), body.bottom())

    # the weft: a falling loss curve across the loom
    top, bottom = body.top() + body.height() * 0.18, body.bottom() - body.height() * 0.16
    x0, x1 = body.left() + body.width() * 0.06, body.right() - body.width() * 0.06

    def point(t: float) -> QPointF:
        return QPointF(x0 + (x1 - x0) * t, bottom - (bottom - top) * (_loss(t) - 0.1) / 0.82)

    curve = QPainterPath(point(0))
    steps = 120
    for i in range(1, steps + 1):
        curve.lineTo(point(i / steps))
    weft_w = 120 if small else 62
    grad = QLinearGradient(QPointF(x0, top), QPointF(x1, bottom))
    grad.setColorAt(0.0, QColor("#ffcf5a"))
    grad.setColorAt(1.0, QColor("#ff7a59"))
    # a dark halo so the thread reads as lying on top of the warp
    p.setPen(QPen(QColor(10, 12, 40, 120), weft_w + (30 if small else 22), Qt.PenStyle.SolidLine,
                  Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin))
    p.drawPath(curve)
    p.setPen(QPen(grad, weft_w, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin))
    p.drawPath(curve)

    # woven: every other warp thread passes over the weft where they cross
    if not small:
        for i, x in enumerate(xs):
            if i % 2:
                t = (x - x0) / (x1 - x0)
                y = point(t).y()
                # an opaque stretch with a shadow on the thread below: the warp passes over it
                p.setPen(QPen(QColor(10, 12, 40, 110), warp_w + 14, Qt.PenStyle.SolidLine, Qt.PenCapStyle.FlatCap))
                p.drawLine(QPointF(x, y - weft_w * 0.62), QPointF(x, y + weft_w * 0.62))
                draw_warp(x, y - weft_w * 0.75, y + weft_w * 0.75, QColor(206, 212, 248))

    p.setClipping(False)
    # a thin light rim keeps the edge crisp on dark backgrounds
    p.setPen(QPen(QColor(255, 255, 255, 40), 4 if not small else 16))
    p.setBrush(Qt.BrushStyle.NoBrush)
    p.drawPath(shape)
    p.end()
    return img


def png_bytes(img) -> bytes:
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice

    data = QByteArray()
    buf = QBuffer(data)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    if not img.save(buf, "PNG"):
        raise RuntimeError("PNG encoding failed")
    buf.close()
    return bytes(data)


def icns_bytes(entries: list[tuple[bytes, bytes]]) -> bytes:
    """An .icns container from ``(type code, png bytes)`` entries."""
    body = b"".join(code + struct.pack(">I", 8 + len(png)) + png for code, png in entries)
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def read_icns(data: bytes) -> dict[bytes, bytes]:
    """Parse an .icns back into ``{type code: payload}`` (used by the tests)."""
    if data[:4] != b"icns" or struct.unpack(">I", data[4:8])[0] != len(data):
        raise ValueError("not an icns file")
    out, pos = {}, 8
    while pos < len(data):
        code, length = data[pos:pos + 4], struct.unpack(">I", data[pos + 4:pos + 8])[0]
        if length < 8 or pos + length > len(data):
            raise ValueError(f"bad icns entry {code!r} at {pos}")
        out[code] = data[pos + 8:pos + length]
        pos += length
    return out


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841  (fonts, image IO)
    iconset = HERE / "Tuneloom.iconset"
    iconset.mkdir(exist_ok=True)
    rendered: dict[int, bytes] = {}
    entries = []
    for name, (px, code) in ICONSET.items():
        if px not in rendered:
            rendered[px] = png_bytes(draw(px))
        (iconset / name).write_bytes(rendered[px])
        entries.append((code, rendered[px]))
    (HERE / "Tuneloom.icns").write_bytes(icns_bytes(entries))
    (HERE / "Tuneloom.png").write_bytes(rendered[512])
    print(f"wrote {iconset.relative_to(HERE.parent.parent)}/ ({len(ICONSET)} PNGs), Tuneloom.icns, Tuneloom.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
