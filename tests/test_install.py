"""Tuneloom installed as a user installs it: ``pip install .``, ``pipx install .``, ``uv tool install .``.

The checkout is copied to a temporary folder (nothing lands in the checkout), an sdist is built
from the copy, the wheel is built from the unpacked sdist (so the sdist holds everything the wheel
needs), and the wheel is installed into a fresh virtualenv outside the checkout. That virtualenv
gets the app's dependencies without downloading them: one ``.pth`` line names this interpreter's
site-packages (the dependencies only: a line in a ``.pth`` is added to ``sys.path`` as it is, so the
editable install of the checkout that may sit there stays inactive, and the venv's own
site-packages comes first). Every command then runs from a folder outside the checkout with no
PYTHONPATH, and the test checks that ``app``, ``core`` and the resources come from the venv.

Building needs setuptools>=77 in this interpreter (the test extra installs it): the build runs
without isolation, so it needs no network.
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PY = "python.exe" if os.name == "nt" else "python"


def _setuptools_version() -> tuple[int, ...]:
    import setuptools

    return tuple(int(x) for x in setuptools.__version__.split(".")[:2] if x.isdigit())


def _checkout_files() -> list[str]:
    """The files a clone holds (tracked, or new and not ignored): what a user's checkout has."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                             check=True, timeout=60).stdout.decode()
        return [f for f in out.split("\0") if f and (ROOT / f).is_file()]
    except (OSError, subprocess.SubprocessError):  # not a git checkout (an unpacked sdist)
        skip = {".git", ".venv", "build", "dist", "__pycache__", "runs", "demo-out", ".pytest_cache", ".hypothesis"}
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(ROOT).parts) and not p.name.endswith(".egg-info")]


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
                                                             "TUNELOOM_LOG_DIR")}
    env.update({"TUNELOOM_HOME": str(home), "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1",
                "OLLAMA_HOST": "http://127.0.0.1:9", "TOKENIZERS_PARALLELISM": "false", "TUNELOOM_NO_ALERT": "1",
                "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    env.update(extra)
    return env


def _run(cmd, cwd, env, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, wheel) built from a copy of the checkout, the wheel from the unpacked sdist."""
    assert _setuptools_version() >= (77,), (
        "building Tuneloom needs setuptools>=77 in this interpreter (the test extra installs it: run ./dev setup)")
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "checkout"
    for rel in _checkout_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    env = _env(tmp / "home")
    dist = tmp / "dist"
    sdist = Path(_run([sys.executable, "-c", f"from setuptools import build_meta as b; print(b.build_sdist({str(dist)!r}))"],
                      cwd=src, env=env).stdout.strip().splitlines()[-1])
    with tarfile.open(dist / sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(tmp / "unpacked")
    unpacked = next((tmp / "unpacked").iterdir())
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", dist, unpacked],
         cwd=tmp, env=env)
    wheel = next(dist.glob("tuneloom-*.whl"))
    return dist / sdist, wheel


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory):
    """A fresh virtualenv outside the checkout with the wheel installed, and a folder to run in."""
    _, wheel = built
    tmp = tmp_path_factory.mktemp("user")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp, env=_env(tmp / "home"), timeout=300)
    py = venv / ("Scripts" if os.name == "nt" else "bin") / PY
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", wheel], cwd=tmp, env=_env(tmp / "home"))
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp,
                     env=_env(tmp / "home")).stdout.strip())
    # the dependencies, from this interpreter (never the checkout: that would hide a missing file)
    deps = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()
            and not Path(p).resolve().is_relative_to(ROOT)]
    assert deps, sys.path
    (site / "zz_tuneloom_test_dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    work = tmp / "work"
    work.mkdir()
    return venv, py, site, work


def test_wheel_and_sdist_hold_every_package_and_the_resources(built):
    sdist, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    # every module of app and core in the checkout is in the wheel
    modules = {f for f in _checkout_files() if f.startswith(("app/", "core/")) and f.endswith(".py")}
    assert modules and modules <= names, sorted(modules - names)
    pages = {n for n in names if n.startswith("app/gui/pages/") and n.endswith(".py")}
    assert "app/gui/pages/__init__.py" in pages and len(pages) >= 5, sorted(pages)
    # the resources, inside the installed package tuneloom_resources
    for rel in ("catalog.json", "demo/heldout.json", "demo/data/train.jsonl", "demo/data/valid.jsonl",
                "demo/model/config.json", "demo/model/model.safetensors", "demo/model/tokenizer.json",
                "icons/Tuneloom.png"):
        assert f"tuneloom_resources/{rel}" in names, rel
        assert zipfile.ZipFile(wheel).read(f"tuneloom_resources/{rel}") == (ROOT / "resources" / rel).read_bytes(), rel
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "tuneloom = app.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    # the sdist holds the sources the wheel was built from (the wheel was built from it)
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    assert {"pyproject.toml", "setup.py", "README.md", "LICENSE", "resources/catalog.json",
            "resources/demo/model/model.safetensors", "app/gui/pages/train.py"} <= members


def test_installed_wheel_imports_from_the_venv_and_finds_its_resources(venv):
    root, py, site, work = venv
    code = """if True:
        import json, app.gui.pages, app.gui.main_window, core.paths, core.catalog
        from core.catalog import load_catalog
        bundled = [e for e in load_catalog() if e.local]
        print(json.dumps({"pages": app.gui.pages.__file__, "window": app.gui.main_window.__file__,
                          "core": core.paths.__file__, "resources": str(core.paths.resources_dir()),
                          "demo_model": str(core.paths.demo_model_dir()),
                          "bundled": [str(e.local_path) for e in bundled]}))
    """
    got = json.loads(_run([py, "-c", code], cwd=work, env=_env(work / "home")).stdout.strip().splitlines()[-1])
    for key in ("pages", "window", "core", "resources", "demo_model"):
        path = Path(got[key]).resolve()
        assert path.is_relative_to(site.resolve()), (key, path)
        assert not path.is_relative_to(ROOT), (key, path)
    assert Path(got["resources"]).name == "tuneloom_resources"
    assert (Path(got["demo_model"]) / "model.safetensors").is_file()
    assert got["bundled"] and all(Path(p).is_dir() and Path(p).resolve().is_relative_to(site.resolve())
                                  for p in got["bundled"])


def test_installed_tuneloom_command_runs_a_training_child_and_the_window(venv):
    root, py, site, work = venv
    exe = root / ("Scripts" if os.name == "nt" else "bin") / "tuneloom"
    env = _env(work / "home")
    models = _run([exe, "models"], cwd=work, env=env)  # the catalog, read from the installed resources
    assert "demo" in models.stdout.lower()
    # a job in a process of its own (the window's training) starts from the installed package
    check = _run([exe, "selfcheck"], cwd=work, env=env, timeout=300)
    got = json.loads(check.stdout.strip().splitlines()[-1])
    assert got["ok"] is True and got["child"] != got["parent"]
    win = _run([exe, "--quit-after-paint"], cwd=work, env=env, timeout=300)
    assert "quit-after-paint: first paint after" in win.stderr
    log = (work / "home" / "logs" / "tuneloom.log").read_text()
    assert "window closed, exit code 0" in log
    assert not list((work / "home" / "logs").glob("crash-*.txt"))
