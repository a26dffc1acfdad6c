"""The window's start-up failure on a Linux desktop names the missing library and the command that
installs it, and ./dev installs every library Qt's xcb platform plugin needs."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app import qt_platform
from app.qt_platform import XCB_LIBRARY_PACKAGES, explain_start_failure, parse_ldd

ROOT = Path(__file__).resolve().parent.parent

# What Qt 6.5+ prints when libxcb-cursor0 is missing (QT_QPA_PLATFORM=xcb, a desktop that answers)
QT_CURSOR_MISSING = [
    "From 6.5.0, xcb-cursor0 or libxcb-cursor0 is needed to load the Qt xcb platform plugin.",
    'Could not load the Qt platform plugin "xcb" in "" even though it was found.',
    "This application failed to start because no Qt platform plugin could be initialized. Reinstalling the "
    "application may fix this problem.\n\nAvailable platform plugins are: eglfs, minimal, offscreen, vnc, xcb.",
]
# ...and when another library of the plugin is missing: Qt does not say which
QT_FOUND_BUT_NOT_LOADED = QT_CURSOR_MISSING[1:]
# ...and when the display does not answer
QT_NO_DISPLAY = ["could not connect to display :97", *QT_CURSOR_MISSING]

LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007ffd8a5f2000)
\tlibQt6XcbQpa.so.6 => /venv/PySide6/Qt/plugins/platforms/../../lib/libQt6XcbQpa.so.6 (0x00007f0b1c000000)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f0b1bfd0000)
\tlibxcb-icccm.so.4 => not found
"""


def dev_libraries() -> dict[str, str]:
    text = (ROOT / "dev").read_text()
    block = re.search(r"LINUX_LIBRARIES='\n(.*?)'", text, re.S).group(1)
    return dict(line.split() for line in block.splitlines() if line.strip())


def absent(lib):
    return False


def test_qts_own_words_for_a_missing_cursor_library_become_the_install_command():
    why = explain_start_failure(QT_CURSOR_MISSING, missing=[], present=absent)
    assert "libxcb-cursor.so.0" in why and "apt-get install libxcb-cursor0" in why
    assert "no display" not in why  # the display was never the problem


def test_qts_cursor_line_is_not_believed_when_that_library_is_there():
    """Qt prints its xcb-cursor line whenever the plugin fails, also when another library is missing."""
    why = explain_start_failure(QT_CURSOR_MISSING, missing=["libxcb-icccm.so.4"],
                                present=lambda lib: lib == "libxcb-cursor.so.0")
    assert "apt-get install libxcb-icccm4\n" in why and "cursor" not in why


def test_libraries_ldd_finds_missing_are_named_with_their_packages():
    why = explain_start_failure(QT_FOUND_BUT_NOT_LOADED, missing=parse_ldd(LDD_OUTPUT))
    assert "libxcb-icccm.so.4, libxcb-keysyms.so.1" in why
    assert "apt-get install libxcb-icccm4 libxcb-keysyms1" in why
    assert "no display" not in why
    # Qt's cursor line and ldd's findings together: every library, one command
    why = explain_start_failure(QT_CURSOR_MISSING, missing=["libxcb-icccm.so.4"], present=absent)
    assert "apt-get install libxcb-cursor0 libxcb-icccm4" in why
    # a library the table does not know is still named
    why = explain_start_failure(QT_FOUND_BUT_NOT_LOADED, missing=["libxcb-new.so.9"])
    assert "libxcb-new.so.9" in why and "apt-file search" in why


def test_a_plugin_that_fails_for_an_unknown_reason_says_how_to_find_out():
    why = explain_start_failure(QT_FOUND_BUT_NOT_LOADED, missing=[])
    assert "QT_DEBUG_PLUGINS=1" in why and "no display" not in why


def test_a_display_that_does_not_answer_is_still_called_that(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":97")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    why = explain_start_failure(QT_NO_DISPLAY, missing=["libxcb-icccm.so.4"])
    assert "no display or window server answered" in why and ":97" in why
    assert "apt-get" not in why


def test_parse_ldd_lists_each_missing_library_once():
    assert parse_ldd(LDD_OUTPUT) == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]
    assert parse_ldd("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n") == []


def test_dev_installs_the_packages_the_message_names():
    dev = dev_libraries()
    for lib, pkg in XCB_LIBRARY_PACKAGES.items():
        assert dev.get(lib) == pkg, (lib, pkg, dev.get(lib))
    for pkg in ("libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1"):
        assert pkg in dev.values()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Qt's xcb plugin is the Linux desktop's")
def test_dev_covers_every_x11_library_the_xcb_plugin_links_to():
    plugin = qt_platform.xcb_plugin()
    assert plugin is not None, "PySide6 has no libqxcb.so here"
    out = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, timeout=60).stdout
    libs = {m.group(1) for m in re.finditer(r"^\s*(\S+)\s+=>", out, re.M)}
    x11 = {lib for lib in libs if re.match(r"lib(xcb|X11|xkbcommon)", lib)}
    assert {"libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libxcb.so.1"} <= x11, sorted(x11)
    assert x11 <= set(dev_libraries()), sorted(x11 - set(dev_libraries()))


def test_the_crash_report_of_a_failed_start_names_the_library(tmp_path):
    """Qt's own message machinery: the warnings and the fatal message Qt prints for a missing
    library go through app.logs' handler (Qt aborts the process after the fatal one)."""
    code = f"""if True:
        from app import logs, qt_platform
        qt_platform.missing_libraries = lambda plugin=None: ["libxcb-icccm.so.4"]
        qt_platform.loadable = lambda lib: False
        logs.setup_logging()
        logs.install_qt_handler()
        from PySide6.QtCore import qWarning, qFatal
        for line in {QT_CURSOR_MISSING[:2]!r}:
            qWarning(line)
        qFatal({QT_CURSOR_MISSING[2]!r})
    """
    env = {**os.environ, "TUNELOOM_HOME": str(tmp_path), "TUNELOOM_NO_ALERT": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("TUNELOOM_LOG_DIR", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0  # Qt aborts after a fatal message
    assert "apt-get install libxcb-cursor0 libxcb-icccm4" in proc.stderr, proc.stderr[-3000:]
    reports = sorted((tmp_path / "logs").glob("crash-*.txt"))
    assert reports, proc.stderr[-3000:]
    text = reports[0].read_text()
    assert "Qt stopped the app" in text and "libxcb-cursor.so.0, libxcb-icccm.so.4" in text
    assert "apt-get install libxcb-cursor0 libxcb-icccm4" in text
