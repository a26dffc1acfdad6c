"""Why Qt could not open the window, in words a user can act on (no Qt import here).

When Qt cannot start its platform plugin it prints a few lines and aborts the process
(app.logs.install_qt_handler sees them). On a Linux desktop the usual cause is not the display
but a system library that Qt's xcb plugin links to and the desktop does not have (Qt 6.5+ needs
libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1, ...). Qt names the one it checks itself
("xcb-cursor0 or libxcb-cursor0 is needed to load the Qt xcb platform plugin"); for the others it
only says the plugin "could not be loaded even though it was found", so we ask ``ldd`` which of
the plugin's libraries are missing and name the Debian / Ubuntu packages that hold them: the
same table ``./dev`` installs from (tests/test_qt_platform.py keeps the two equal).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

# library -> the Debian / Ubuntu package that installs it: what Qt's xcb platform plugin links to
XCB_LIBRARY_PACKAGES = {
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
}

# Qt 6.5+: "From 6.5.0, xcb-cursor0 or libxcb-cursor0 is needed to load the Qt xcb platform plugin."
_NEEDED = re.compile(r"(\S+) or (\S+) is needed to load the Qt (\w+) platform plugin")
_FOUND_BUT = re.compile(r'Could not load the Qt platform plugin "(\w+)".*even though it was found')
_NO_DISPLAY = re.compile(r"could not connect to display ?(\S*)|Failed to create wl_display|cannot open display",
                         re.IGNORECASE)
_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.M)


def xcb_plugin() -> Path | None:
    """PySide6's xcb platform plugin (libqxcb.so), or None where there is none (macOS)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("PySide6")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        plugin = Path(folder) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
        if plugin.exists():
            return plugin
    base = getattr(sys, "_MEIPASS", None)  # a PyInstaller bundle keeps Qt's plugins in its own folder
    if base:
        hits = sorted(Path(base).glob("**/platforms/libqxcb.so"))
        return hits[0] if hits else None
    return None


def parse_ldd(text: str) -> list[str]:
    """The libraries ``ldd`` reports as ``not found``, each once, in its order."""
    seen: list[str] = []
    for name in _NOT_FOUND.findall(text):
        if name not in seen:
            seen.append(name)
    return seen


def missing_libraries(plugin: Path | None = None) -> list[str]:
    """The shared libraries the xcb plugin needs that this system lacks ([] when unknown)."""
    plugin = plugin or xcb_plugin()
    ldd = shutil.which("ldd")
    if plugin is None or ldd is None or not sys.platform.startswith("linux"):
        return []
    try:
        out = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_ldd(out.stdout + out.stderr)


def install_command(packages: list[str]) -> str:
    sudo = "" if hasattr(os, "geteuid") and os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install {' '.join(packages)}"


def loadable(library: str) -> bool:
    """Whether the dynamic loader finds ``library`` (a soname such as libxcb-cursor.so.0)."""
    import ctypes

    try:
        ctypes.CDLL(library)
        return True
    except OSError:
        return False


def explain_start_failure(messages: list[str], missing: list[str] | None = None,
                          present: Callable[[str], bool] | None = None) -> str:
    """What to tell the user after Qt's platform plugin failed, from Qt's own messages (oldest first).

    ``missing``: the libraries ``ldd`` found missing; asked here (Linux) when Qt says the plugin
    could not be loaded and it is not given. ``present`` (default :func:`loadable`) checks the
    library Qt names itself: Qt prints its xcb-cursor line whenever the plugin fails to load, also
    when another library is the one missing (seen with PySide6 6.11 on Debian 12)."""
    present = present or loadable
    text = "\n".join(messages)
    needed = _NEEDED.search(text)
    found_but = _FOUND_BUT.search(text)
    no_display = _NO_DISPLAY.search(text)
    # a display that does not answer: the plugin had loaded (it connects after loading), whatever
    # else Qt printed (its xcb-cursor line comes with every failure of the xcb plugin)
    if (needed or found_but) and not no_display:
        plugin = needed.group(3) if needed else found_but.group(1)
        if missing is None and plugin == "xcb":
            missing = missing_libraries()
        missing = list(missing or [])
        packages = [XCB_LIBRARY_PACKAGES.get(lib) for lib in missing]
        if needed and needed.group(2) not in packages:
            # Qt names the package itself (libxcb-cursor0): the plugin may load it at run time, out of ldd's sight
            lib = next((k for k, v in XCB_LIBRARY_PACKAGES.items() if v == needed.group(2)), needed.group(2))
            if lib not in missing and not present(lib):
                missing.insert(0, lib)
                packages.insert(0, needed.group(2))
        known = [p for p in packages if p]
        unknown = [lib for lib, p in zip(missing, packages) if not p]
        if missing:
            what = ", ".join(missing)
            lines = [f"Tuneloom could not open its window: Qt's {plugin} platform plugin (the X11 desktop) needs "
                     f"the system {'library' if len(missing) == 1 else 'libraries'} {what}, which "
                     f"{'is' if len(missing) == 1 else 'are'} not installed."]
            if known:
                lines += ["Install with:", f"  {install_command(known)}",
                          "(in a checkout, ./dev installs everything the window needs), then start Tuneloom again."]
            if unknown:
                lines += [f"Install the package that provides {', '.join(unknown)} "
                          "(Debian / Ubuntu: `apt-file search NAME` finds it)."]
            return "\n".join(lines)
        return (f"Tuneloom could not open its window: Qt found its {plugin} platform plugin but could not load it "
                "(a system library it needs is probably missing). Start Tuneloom again with QT_DEBUG_PLUGINS=1 "
                "to see which one; in a checkout, ./dev installs what the window needs.")
    if no_display:
        where = os.environ.get("WAYLAND_DISPLAY") or os.environ.get("DISPLAY") or "none set"
        return ("Tuneloom could not open its window: no display or window server answered "
                f"(DISPLAY / WAYLAND_DISPLAY: {where}). Start it from a desktop session; without a screen, "
                "`tuneloom demo` runs the headless demo.")
    return ("Tuneloom could not open its window: no display or window server answered, or a Qt plugin could not be "
            "loaded. Start it from a desktop session; without a screen, `tuneloom demo` runs the headless demo.")
