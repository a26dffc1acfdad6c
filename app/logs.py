"""Where Tuneloom writes its log and crash reports, and how a user gets to them.

The double-clicked app has no terminal: what would have gone to stderr goes to
``log_dir()/tuneloom.log`` (``~/Library/Logs/Tuneloom`` on macOS, where Console.app looks;
platformdirs' user log folder elsewhere; ``$TUNELOOM_HOME/logs`` when that override is set, as
the tests do). A start that fails (a missing module in a bundle, no window server, a Qt platform
plugin that cannot load) leaves a ``crash-*.txt`` there that says what happened in words before
the traceback, instead of an app that vanishes from the Dock.

Only the standard library is imported at module level: this module must work when everything
else failed to import. Qt is imported lazily by :func:`show_logs` and :func:`install_qt_handler`.
"""
from __future__ import annotations

import datetime as _dt
import faulthandler
import logging
import logging.handlers
import os
import platform
import subprocess
import sys
import tempfile
import threading
import traceback
from collections import deque
from pathlib import Path

LOG_NAME = "tuneloom.log"
FAULT_NAME = "faults.log"
_handler: logging.Handler | None = None
_console: logging.Handler | None = None
_fault_file = None
_qt_messages: deque[str] = deque(maxlen=40)  # recent Qt warnings, quoted in a crash report


def log_dir() -> Path:
    """The folder for logs and crash reports (not created here)."""
    override = os.environ.get("TUNELOOM_LOG_DIR")
    if override:
        return Path(override)
    home = os.environ.get("TUNELOOM_HOME")
    if home:
        return Path(home) / "logs"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Logs" / "Tuneloom"
    try:
        from platformdirs import user_log_dir
    except ImportError:  # a broken install must still be able to say so
        return Path(tempfile.gettempdir()) / "Tuneloom" / "logs"
    return Path(user_log_dir("Tuneloom", "Tuneloom"))


def _writable_log_dir() -> Path:
    d = log_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / ".write-test"
        probe.write_text("")
        probe.unlink()
        return d
    except OSError:
        d = Path(tempfile.gettempdir()) / "Tuneloom-logs"
        d.mkdir(parents=True, exist_ok=True)
        return d


def version() -> str:
    try:
        from importlib.metadata import version as _v

        return _v("tuneloom")
    except Exception:
        try:
            import core

            return core.__version__
        except Exception:
            return "unknown"


def setup_logging(level: int = logging.INFO) -> Path:
    """Send Python logging (and uncaught exceptions, and hard crashes through faulthandler)
    to the log folder; warnings and errors still reach stderr when there is one, as they did
    before a handler existed. Safe to call again: a second call with the same folder changes
    nothing, a call after the folder changed (another TUNELOOM_HOME) moves the handler there.
    Returns the log file's path."""
    global _handler, _console, _fault_file
    d = _writable_log_dir()
    path = d / LOG_NAME
    root = logging.getLogger()
    if _handler is not None and Path(getattr(_handler, "baseFilename", "")) == path:
        return path
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    if _console is None and sys.stderr is not None:
        _console = logging.StreamHandler()  # what logging's last-resort handler did
        _console.setLevel(logging.WARNING)
        root.addHandler(_console)
    h = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8",
                                             delay=True)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    h.setLevel(level)
    root.addHandler(h)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    _handler = h
    logging.captureWarnings(True)

    # A segfault or abort (e.g. Qt's qFatal) kills the process before Python's except blocks
    # run; faulthandler still writes every thread's stack to this file.
    try:
        if _fault_file is not None:
            _fault_file.close()
        _fault_file = open(d / FAULT_NAME, "a", encoding="utf-8")
        faulthandler.enable(_fault_file, all_threads=True)
    except (OSError, RuntimeError, ValueError):
        _fault_file = None

    previous = sys.excepthook

    def excepthook(etype, value, tb):
        # Qt calls this for exceptions in slots; the window stays open, the log keeps the story.
        if not issubclass(etype, KeyboardInterrupt):
            logging.getLogger("tuneloom").error("uncaught exception", exc_info=(etype, value, tb))
        previous(etype, value, tb)

    if not getattr(sys.excepthook, "_tuneloom", False):
        excepthook._tuneloom = True
        sys.excepthook = excepthook
        previous_thread_hook = threading.excepthook

        def thread_hook(args):
            logging.getLogger("tuneloom").error(f"uncaught exception in thread {args.thread.name if args.thread else '?'}",
                                                exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
            previous_thread_hook(args)

        threading.excepthook = thread_hook
    logging.getLogger("tuneloom").info("Tuneloom %s starting (%s)", version(), " ".join(sys.argv))
    return path


def install_qt_handler() -> None:
    """Route Qt's own messages into the log; a fatal one (no platform plugin, no display) also
    leaves a crash report, because Qt aborts the process right after it."""
    from PySide6.QtCore import QtMsgType, qInstallMessageHandler

    qt_log = logging.getLogger("qt")

    def handler(mode, context, message):
        _qt_messages.append(message)
        if mode == QtMsgType.QtFatalMsg:
            qt_log.critical(message)
            try:
                from app.qt_platform import explain_start_failure  # a missing library, which, how to install it

                why = explain_start_failure(list(_qt_messages))
                p = write_crash_report(None, what=f"Qt stopped the app: {message}\n\n{why}")
                print(f"{why}\nTuneloom could not start; crash report: {p}", file=sys.stderr)
            except Exception:
                pass
        elif mode in (QtMsgType.QtCriticalMsg, QtMsgType.QtWarningMsg):
            qt_log.warning(message)
        else:
            qt_log.debug(message)

    qInstallMessageHandler(handler)


def _explain(exc: BaseException | None, what: str | None) -> str:
    """A sentence a user (or whoever they send the report to) can act on."""
    if what:
        return what
    if isinstance(exc, ModuleNotFoundError):
        frozen = getattr(sys, "frozen", False)
        return (f"A part of Tuneloom is missing: the Python module {exc.name!r} could not be imported. "
                + ("The app bundle is incomplete; please download it again or report this file."
                   if frozen else "Run `./dev setup` (or `pip install -e .`) to install what is missing."))
    if isinstance(exc, ImportError):
        return f"A library Tuneloom needs could not be loaded: {exc}"
    if exc is not None:
        return f"Tuneloom stopped because of an unexpected error: {type(exc).__name__}: {exc}"
    return "Tuneloom stopped unexpectedly."


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError:
        return ""


def write_crash_report(exc_info=None, what: str | None = None) -> Path:
    """Write ``crash-<time>.txt`` into the log folder and return its path.

    ``exc_info`` is a ``sys.exc_info()`` triple (or an exception, or None for the current one);
    ``what`` overrides the one-line explanation at the top. Never raises for a full disk or a
    read-only home: it falls back to the temp folder."""
    if exc_info is None:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    exc = exc_info[1] if exc_info and exc_info[0] is not None else None
    now = _dt.datetime.now()
    env_keys = ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY", "TUNELOOM_HOME", "LANG")
    parts = [
        "Tuneloom crash report",
        "=====================",
        "",
        _explain(exc, what),
        "",
        "Please attach this file when you report the problem.",
        "",
        f"time:       {now.isoformat(timespec='seconds')}",
        f"version:    {version()}",
        f"python:     {sys.version.split()[0]} ({sys.executable})",
        f"platform:   {platform.platform()} {platform.machine()}",
        f"bundled:    {bool(getattr(sys, 'frozen', False))}" + (f" ({sys._MEIPASS})" if hasattr(sys, "_MEIPASS") else ""),
        f"arguments:  {sys.argv!r}",
    ]
    parts += [f"env {k}: {os.environ[k]}" for k in env_keys if k in os.environ]
    if exc is not None:
        parts += ["", "Traceback", "---------", "".join(traceback.format_exception(*exc_info)).rstrip()]
    if _qt_messages:
        parts += ["", "Recent Qt messages", "------------------", *list(_qt_messages)]
    log_tail = _tail(log_dir() / LOG_NAME)
    if log_tail:
        parts += ["", f"Last lines of {LOG_NAME}", "-" * (14 + len(LOG_NAME)), log_tail.rstrip()]
    text = "\n".join(parts) + "\n"
    d = _writable_log_dir()
    from core.atomic import unique_names

    for path in unique_names(d, f"crash-{now.strftime('%Y%m%d-%H%M%S')}", ".txt"):
        try:  # the name is taken now (empty), then the whole report replaces it
            open(path, "x").close()
            break
        except FileExistsError:
            continue
    tmp = path.with_name("." + path.name + ".part")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # (a full disk): no empty report left under the name taken above
        for leftover in (tmp, path):
            leftover.unlink(missing_ok=True)
        raise
    logging.getLogger("tuneloom").error("crash report written to %s", path)
    return path


def notify_crash(report: Path) -> None:
    """Tell a user who double-clicked the app (no terminal to read) that it could not start.

    Only in a macOS bundle: a system alert through ``osascript`` (no Qt: Qt may be what failed),
    with a button that reveals the report in Finder. Gives up after two minutes so an unattended
    run (CI) never hangs. Elsewhere the message on stderr and the report are enough."""
    if sys.platform != "darwin" or not getattr(sys, "frozen", False) or os.environ.get("TUNELOOM_NO_ALERT"):
        return
    msg = f"A crash report was saved in {report.parent}. Please attach {report.name} when you report this."
    script = ('display alert "Tuneloom could not start" message ' + _applescript_str(msg)
              + ' as critical buttons {"Show Report", "OK"} default button "OK" giving up after 120')
    try:
        out = subprocess.run(["osascript", "-e", script], capture_output=True, text=True, timeout=130).stdout
        if "Show Report" in out:
            subprocess.run(["open", "-R", str(report)], timeout=10)
    except (OSError, subprocess.SubprocessError):
        pass


def _applescript_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def show_logs() -> bool:
    """Reveal the log folder in Finder (``open``) or the desktop's file manager (Qt's
    QDesktopServices when a QApplication runs, else ``xdg-open``). The folder is created first so
    there is always something to show. Returns False when nothing could open it."""
    d = _writable_log_dir()
    if sys.platform == "darwin":
        try:
            subprocess.Popen(["open", str(d)])
            return True
        except OSError:
            return False
    try:
        from PySide6.QtCore import QUrl
        from PySide6.QtGui import QDesktopServices
        from PySide6.QtWidgets import QApplication

        if QApplication.instance() is not None:
            return bool(QDesktopServices.openUrl(QUrl.fromLocalFile(str(d))))
    except ImportError:
        pass
    opener = "explorer" if sys.platform == "win32" else "xdg-open"
    try:
        subprocess.Popen([opener, str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return True
    except OSError:
        return False
