"""The app bundle and its launcher.

Unmarked tests (seconds): the log folder, crash reports for an import failure and for a Qt that
cannot start, the quit-after-paint hook, "Show logs", the icon.

Tests marked ``bundle`` (minutes) build the one-folder app with PyInstaller from
build_macos.spec into a temporary folder (its cache too: nothing lands in the checkout or in
~/.cache), then run the *bundled* binary: ``demo`` headless must print the same summary as the
source checkout's, the window must start and quit after its first paint offscreen, and a
launch with no display must leave a crash report. With TUNELOOM_BUNDLE_DIST=DIR they use an
already built DIR (the macOS workflow points it at the signed dist/ holding Tuneloom.app).
Deselect them with ``-m "not bundle"``.
"""
import json
import os
import plistlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "resources" / "icons"))


def _env(home: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update({"TUNELOOM_HOME": str(home), "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1",
                "OLLAMA_HOST": "http://127.0.0.1:9", "TOKENIZERS_PARALLELISM": "false", "TUNELOOM_NO_ALERT": "1"})
    env.pop("TUNELOOM_LOG_DIR", None)
    env.update(extra)
    return env


def _reports(home: Path) -> list[Path]:
    return sorted((home / "logs").glob("crash-*.txt"))


# ---------------------------------------------------------------- launcher, logs (source checkout)

def test_log_dir_follows_the_platform_and_the_overrides(monkeypatch, tmp_path):
    from app import logs

    monkeypatch.delenv("TUNELOOM_LOG_DIR", raising=False)
    monkeypatch.setenv("TUNELOOM_HOME", str(tmp_path / "home"))
    assert logs.log_dir() == tmp_path / "home" / "logs"
    monkeypatch.setenv("TUNELOOM_LOG_DIR", str(tmp_path / "x"))
    assert logs.log_dir() == tmp_path / "x"
    monkeypatch.delenv("TUNELOOM_LOG_DIR")
    monkeypatch.delenv("TUNELOOM_HOME")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert logs.log_dir() == Path.home() / "Library" / "Logs" / "Tuneloom"
    monkeypatch.setattr(sys, "platform", "linux")
    from platformdirs import user_log_dir

    assert logs.log_dir() == Path(user_log_dir("Tuneloom", "Tuneloom"))


def test_an_import_failure_leaves_a_readable_crash_report(tmp_path):
    """The window's start fails to import Qt: exit 1, a message on stderr, a report that says so."""
    code = "import sys; sys.modules['PySide6'] = None\nfrom app.cli import main\nsys.exit(main([]))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    reports = _reports(tmp_path)
    assert len(reports) == 1, proc.stderr
    text = reports[0].read_text()
    assert text.startswith("Tuneloom crash report")
    assert "the Python module 'PySide6" in text and "could not be imported" in text
    assert "Traceback" in text and "ModuleNotFoundError" in text
    assert "version:    " in text and "platform:" in text
    assert str(reports[0]) in proc.stderr
    # the log file holds the start and the report's path
    log = (tmp_path / "logs" / "tuneloom.log").read_text()
    assert "starting" in log and str(reports[0]) in log


def test_no_display_for_qt_leaves_a_crash_report_instead_of_vanishing(tmp_path):
    """A display that does not answer (as on a Mac with no window server): Qt aborts the process,
    the report is written first, from Qt's fatal message."""
    proc = subprocess.run([sys.executable, "-m", "app.cli"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=_env(tmp_path, QT_QPA_PLATFORM="xcb", DISPLAY=":97", WAYLAND_DISPLAY=""))
    assert proc.returncode != 0
    reports = _reports(tmp_path)
    assert reports, proc.stderr[-2000:]
    text = reports[0].read_text()
    assert "Qt stopped the app" in text and "platform plugin" in text
    assert "Recent Qt messages" in text
    assert (tmp_path / "logs" / "faults.log").exists()  # faulthandler's record of the abort


def test_quit_after_paint_opens_the_window_and_quits(tmp_path):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "app.cli", "--quit-after-paint"], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "quit-after-paint: first paint after" in proc.stderr
    log = (tmp_path / "logs" / "tuneloom.log").read_text()
    assert "quit-after-paint: first paint after" in log and "window closed, exit code 0" in log
    assert not _reports(tmp_path)
    assert time.monotonic() - t0 < 300


def test_files_on_the_command_line_open_in_the_window(monkeypatch, tmp_path):
    import app.gui.main as gui_main
    from app import cli

    data = tmp_path / "chats.jsonl"
    data.write_text('{"messages": []}\n')
    seen = {}
    monkeypatch.setattr(gui_main, "run_gui", lambda argv=None, quit_after_paint=None: seen.update(
        argv=argv, quit=quit_after_paint) or 0)
    monkeypatch.setattr(cli, "_has_display", lambda: True)
    monkeypatch.setenv("TUNELOOM_HOME", str(tmp_path))
    assert cli.main([str(data), "-psn_0_12345", "--quit-after-paint"]) == 0
    assert seen["argv"][1:] == [str(data)] and seen["quit"] is True
    # a subcommand is still a subcommand, and a missing file is argparse's error as before
    with pytest.raises(SystemExit):
        cli.main([str(tmp_path / "missing.jsonl")])


def test_show_logs_reveals_the_log_folder(monkeypatch, tmp_path):
    from app import logs

    monkeypatch.setenv("TUNELOOM_LOG_DIR", str(tmp_path / "logs"))
    calls = []

    class FakePopen:
        def __init__(self, cmd, **kw):
            calls.append(cmd)

    monkeypatch.setattr(logs.subprocess, "Popen", FakePopen)
    try:
        from PySide6.QtGui import QDesktopServices

        monkeypatch.setattr(QDesktopServices, "openUrl", staticmethod(lambda url: calls.append(url.toLocalFile()) or True))
    except ImportError:
        pass
    assert logs.show_logs() is True
    assert (tmp_path / "logs").is_dir()
    assert calls and str(tmp_path / "logs") in str(calls[-1])
    monkeypatch.setattr(sys, "platform", "darwin")
    assert logs.show_logs() is True
    assert calls[-1] == ["open", str(tmp_path / "logs")]


def test_icon_icns_holds_every_size_as_png():
    import make_icons
    from PySide6.QtGui import QImage

    icons = ROOT / "resources" / "icons"
    entries = make_icons.read_icns((icons / "Tuneloom.icns").read_bytes())
    assert set(entries) == {code for _, code in make_icons.ICONSET.values()}
    for name, (px, code) in make_icons.ICONSET.items():
        png = entries[code]
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        img = QImage.fromData(png, "PNG")
        assert (img.width(), img.height()) == (px, px), name
        assert (icons / "Tuneloom.iconset" / name).read_bytes() == png  # the sources are what the .icns holds
        # a real drawing: transparent corners, an opaque body
        assert img.pixelColor(0, 0).alpha() == 0 and img.pixelColor(px // 2, px // 2).alpha() == 255
    big = QImage.fromData(entries[b"ic10"], "PNG")
    assert len({big.pixel(x, y) for x in range(200, 824, 16) for y in range(200, 824, 16)}) > 50


def test_icon_script_redraws_the_same_pngs(tmp_path):
    """The committed PNGs are the script's output, not hand edits."""
    import make_icons

    from PySide6.QtGui import QGuiApplication

    QGuiApplication.instance() or QGuiApplication([])
    for name in ("icon_16x16.png", "icon_128x128.png"):
        px, _ = make_icons.ICONSET[name]
        committed = (ROOT / "resources" / "icons" / "Tuneloom.iconset" / name).read_bytes()
        from PySide6.QtGui import QImage

        a, b = QImage.fromData(committed, "PNG"), make_icons.draw(px)
        a = a.convertToFormat(b.format())
        diff = sum(abs(((a.pixel(x, y) >> s) & 255) - ((b.pixel(x, y) >> s) & 255))
                   for x in range(px) for y in range(px) for s in (0, 8, 16, 24))
        assert diff / (px * px * 4) < 1.0, name


# ---------------------------------------------------------------- the bundle (PyInstaller build)

def _binary(dist: Path) -> Path:
    if sys.platform == "darwin":
        return dist / "Tuneloom.app" / "Contents" / "MacOS" / "Tuneloom"
    return dist / "Tuneloom" / ("Tuneloom.exe" if sys.platform == "win32" else "Tuneloom")


def _json_line(stdout: str) -> dict:
    return json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])


@pytest.fixture(scope="module")
def source_demo(installed_demo):
    """The demo of the sources, installed from their wheel (the suite's one demo run, which
    tests/test_demo.py checks too: tests/conftest.py), started before the build so the two share
    the machine's cores."""
    return installed_demo, installed_demo.out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, request):
    """(dist folder, build folder or None, seconds the build took or None)."""
    given = os.environ.get("TUNELOOM_BUNDLE_DIST")
    if given:
        return Path(given), None, None
    pytest.importorskip("PyInstaller")
    if any("source_demo" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("source_demo")  # start it now: it runs while PyInstaller builds
    tmp = tmp_path_factory.mktemp("bundle")
    env = dict(os.environ, PYINSTALLER_CONFIG_DIR=str(tmp / "cache"))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
                           "--distpath", str(tmp / "dist"), "--workpath", str(tmp / "build"),
                           str(ROOT / "build_macos.spec")], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=2400)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    size = sum(f.stat().st_size for f in (tmp / "dist").rglob("*") if f.is_file() and not f.is_symlink())
    print(f"\nbundle built in {seconds:.0f} s, {size / 2**20:.0f} MiB")
    (tmp / "build-report.json").write_text(json.dumps({"seconds": seconds, "bytes": size}))
    return tmp / "dist", tmp / "build", seconds


@pytest.mark.bundle
@pytest.mark.timeout(3600)
def test_bundle_holds_what_the_app_needs_at_run_time(bundle):
    dist, build, _ = bundle
    exe = _binary(dist)
    assert exe.is_file() and os.access(exe, os.X_OK)
    top = exe.parent.parent if sys.platform == "darwin" else exe.parent
    files = {str(p.relative_to(top)) for p in top.rglob("*")}

    def has(fragment):
        return any(fragment in f for f in files)

    assert has("resources/demo/model/config.json") and has("resources/catalog.json")
    assert has("resources/icons/Tuneloom.png")
    assert has("core/export/kquants_jit.py")  # numba keys its kernel cache on the source (build_macos.spec)
    assert has("resources/kernels/kquants.json") and has("resources/kernels/kquants-q6.bc")  # (kquants_aot)
    assert has("platforms/libqoffscreen") and has("imageformats/libqpng") or has("imageformats/libqjpeg")
    if sys.platform == "darwin":
        assert has("platforms/libqcocoa.dylib") and has("styles/libqmacstyle.dylib")
        assert has("Resources/Tuneloom.icns")
        libs = [top / f for f in files if Path(f).name.startswith("libmlx") and f.endswith(".dylib")]
        assert libs and all((p.parent / "mlx.metallib").exists() for p in libs)
        info = plistlib.loads((top / "Info.plist").read_bytes())
    else:
        assert has("platforms/libqxcb.so")
        assert has("libmlx.so")
        # the spec writes what BUNDLE would merge into its own work folder (build/<spec name>/)
        info = plistlib.loads(next(build.rglob("Info.plist")).read_bytes()) if build else None
    if info is not None:
        assert info["CFBundleIdentifier"] == "app.tuneloom.Tuneloom"
        from importlib.metadata import version

        assert info["CFBundleShortVersionString"] == version("tuneloom")
        assert info["LSMinimumSystemVersion"] == "14.0" and info["LSArchitecturePriority"] == ["arm64"]
        assert info["NSHighResolutionCapable"] is True and info["LSApplicationCategoryType"].startswith("public.app-category.")
        types = {u for d in info["CFBundleDocumentTypes"] for u in d["LSItemContentTypes"]}
        declared = {d["UTTypeIdentifier"]: d for d in info["UTImportedTypeDeclarations"]}
        assert types <= declared.keys() | {"public.json", "public.comma-separated-values-text",
                                           "public.tab-separated-values-text", "public.plain-text"}
        exts = {e for d in declared.values() for e in d["UTTypeTagSpecification"]["public.filename-extension"]}
        assert {"jsonl", "parquet"} <= exts and len(types) == 6

    # modules imported by name at run time are in the archive
    from PyInstaller.archive.readers import CArchiveReader

    pyz = CArchiveReader(str(exe)).open_embedded_archive("PYZ.pyz")
    names = set(pyz.toc)
    for mod in ("app.cli", "app.logs", "app.gui.main_window", "core.demo", "mlx_lm.models.qwen2", "mlx_lm.models.qwen3",
                "mlx_lm.models.llama", "mlx_lm.tuner.lora", "jinja2.sandbox", "transformers.models.qwen2.tokenization_qwen2",
                "pyqtgraph", "superqt", "platformdirs", "sentencepiece"):
        assert mod in names, mod
    assert not any(n.startswith(("torch.", "PyQt5", "PyQt6", "tkinter")) for n in names)
    assert not has("tbbpool")  # numba's TBB layer, whose libtbb nothing ships (build_macos.spec)


def _same_text(stdout: str, out: Path) -> list[str]:
    """The printed summary with the output folder and the timings taken out."""
    text = stdout.replace(str(out), "OUT")
    return [re.sub(r"\b\d+(\.\d+)?s\b", "Ns", ln) for ln in text.splitlines() if not ln.startswith("{")]


@pytest.mark.bundle
@pytest.mark.timeout(3600)
def test_bundled_demo_prints_the_same_summary_as_the_source_checkout(bundle, source_demo, tmp_path):
    dist, _, _ = bundle
    proc = subprocess.run([str(_binary(dist)), "demo", "--out", str(tmp_path / "demo")], cwd=tmp_path,
                          env=_env(tmp_path / "home"), capture_output=True, text=True, timeout=1800)
    src, src_out = source_demo
    done = src.result(timeout=1800)
    src_stdout, src_stderr = done.stdout, done.stderr
    assert done.returncode == 0, "the sources' demo fails itself:\n" + src_stdout[-2000:] + src_stderr[-2000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ours, theirs = _json_line(proc.stdout), _json_line(src_stdout)
    ours.pop("seconds", None), theirs.pop("seconds", None)
    assert ours == theirs and ours["ok"] is True
    a, b = (json.loads((p / "summary.json").read_text()) for p in (tmp_path / "demo", src_out))
    assert [(s["stage"], s["ok"]) for s in a["stages"]] == [(s["stage"], s["ok"]) for s in b["stages"]]
    # llama.cpp is in the bundle too: the agreement numbers are measured there (None in both without it)
    assert a["f16_agreement"] == b["f16_agreement"] and a["q8_0_agreement"] == b["q8_0_agreement"]
    # the printed summary, model answers included, is the same text but for folders and timings
    assert _same_text(proc.stdout, tmp_path / "demo") == _same_text(src_stdout, src_out)


@pytest.mark.bundle
@pytest.mark.timeout(3600)
def test_bundled_window_starts_and_quits_after_its_first_paint(bundle, tmp_path):
    dist, _, _ = bundle
    proc = subprocess.run([str(_binary(dist)), "--quit-after-paint"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "quit-after-paint: first paint after" in proc.stderr
    log = (tmp_path / "logs" / "tuneloom.log").read_text()
    assert "window closed, exit code 0" in log
    assert not _reports(tmp_path), _reports(tmp_path) and _reports(tmp_path)[0].read_text()


@pytest.mark.bundle
@pytest.mark.timeout(3600)
@pytest.mark.skipif(sys.platform != "linux", reason="an X display that does not answer is a Linux situation")
def test_bundled_app_without_a_display_leaves_a_crash_report(bundle, tmp_path):
    dist, _, _ = bundle
    proc = subprocess.run([str(_binary(dist))], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=_env(tmp_path, QT_QPA_PLATFORM="xcb", DISPLAY=":97", WAYLAND_DISPLAY=""))
    assert proc.returncode != 0
    reports = _reports(tmp_path)
    assert reports, proc.stderr[-3000:]
    text = reports[0].read_text()
    assert "Qt stopped the app" in text and "bundled:    True" in text


@pytest.mark.bundle
@pytest.mark.timeout(3600)
def test_bundled_subcommands_work_like_the_cli(bundle, tmp_path):
    dist, _, _ = bundle
    data = ROOT / "resources" / "demo" / "data"
    files = sorted(p for p in data.iterdir() if p.suffix == ".jsonl")
    proc = subprocess.run([str(_binary(dist)), "data", "check", "--json", str(files[0])], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    src = subprocess.run([sys.executable, "-m", "app.cli", "data", "check", "--json", str(files[0])], cwd=ROOT,
                         env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == src.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == json.loads(src.stdout)
    bad = subprocess.run([str(_binary(dist)), "no-such-command"], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    # the window trains in a child process: the frozen executable must become that child (freeze_support)
    check = subprocess.run([str(_binary(dist)), "selfcheck"], cwd=tmp_path, env=_env(tmp_path),
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-3000:]
    got = _json_line(check.stdout)
    assert got["ok"] is True and got["child"] != got["parent"]
    # the shipped K-quant kernels load in the frozen app too (their source beside the bundle's code)
    assert got["shipped_kernels"] == {"Q4_K": True, "Q5_K": True, "Q6_K": True}, check.stderr[-2000:]

