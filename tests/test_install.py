"""Tuneloom installed as a user installs it: ``pip install .``, ``pipx install .``, ``uv tool install .``.

tests/fixtures/installed.py builds the sdist from a copy of the checkout, the wheel from the
unpacked sdist, and installs it into a fresh virtualenv outside the checkout (the session
fixture ``installed_tuneloom``); ``installed_demo`` is one ``tuneloom demo`` run by that venv's
command (tests/test_demo.py checks its numbers). Every command here runs from a folder outside
the checkout with no PYTHONPATH, and the tests check that ``app``, ``core`` and the resources
come from the venv.
"""
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.fixtures.installed import ROOT, checkout_files, run


def test_wheel_and_sdist_hold_every_package_and_the_resources(installed_tuneloom):
    sdist, wheel = installed_tuneloom.sdist, installed_tuneloom.wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    # every module of app and core in the checkout is in the wheel
    modules = {f for f in checkout_files() if f.startswith(("app/", "core/")) and f.endswith(".py")}
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
    assert sdist is not None, "built without the sdist: setuptools>=77 is missing here (./dev setup installs it)"
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    assert {"pyproject.toml", "setup.py", "README.md", "LICENSE", "resources/catalog.json",
            "resources/demo/model/model.safetensors", "app/gui/pages/train.py"} <= members


def test_installed_wheel_imports_from_the_venv_and_finds_its_resources(installed_tuneloom):
    py, site, work = installed_tuneloom.python, installed_tuneloom.site, installed_tuneloom.work
    code = """if True:
        import json, app.gui.pages, app.gui.main_window, core.paths, core.catalog
        from core.catalog import load_catalog
        bundled = [e for e in load_catalog() if e.local]
        print(json.dumps({"pages": app.gui.pages.__file__, "window": app.gui.main_window.__file__,
                          "core": core.paths.__file__, "resources": str(core.paths.resources_dir()),
                          "demo_model": str(core.paths.demo_model_dir()),
                          "bundled": [str(e.local_path) for e in bundled]}))
    """
    got = json.loads(run([py, "-c", code], cwd=work, env=installed_tuneloom.env()).stdout.strip().splitlines()[-1])
    for key in ("pages", "window", "core", "resources", "demo_model"):
        path = Path(got[key]).resolve()
        assert path.is_relative_to(site.resolve()), (key, path)
        assert not path.is_relative_to(ROOT), (key, path)
    assert Path(got["resources"]).name == "tuneloom_resources"
    assert (Path(got["demo_model"]) / "model.safetensors").is_file()
    assert got["bundled"] and all(Path(p).is_dir() and Path(p).resolve().is_relative_to(site.resolve())
                                  for p in got["bundled"])


def test_installed_tuneloom_command_runs_a_training_child_and_the_window(installed_tuneloom):
    exe, work, env = installed_tuneloom.exe, installed_tuneloom.work, installed_tuneloom.env()
    models = run([exe, "models"], cwd=work, env=env)  # the catalog, read from the installed resources
    assert "demo" in models.stdout.lower()
    # a job in a process of its own (the window's training) starts from the installed package
    check = run([exe, "selfcheck"], cwd=work, env=env, timeout=300)
    got = json.loads(check.stdout.strip().splitlines()[-1])
    assert got["ok"] is True and got["child"] != got["parent"]
    # the K-quant kernels shipped as bitcode load from the installed resources (no numba compile)
    assert got["shipped_kernels"] == {"Q4_K": True, "Q5_K": True, "Q6_K": True}, check.stderr[-2000:]
    win = run([exe, "--quit-after-paint"], cwd=work, env=env, timeout=300)
    assert "quit-after-paint: first paint after" in win.stderr
    log = (work / "home" / "logs" / "tuneloom.log").read_text()
    assert "window closed, exit code 0" in log
    assert not list((work / "home" / "logs").glob("crash-*.txt"))


@pytest.mark.timeout(3600)  # waits for the whole demo (3-4 min here; far longer on a loaded machine)
def test_installed_demo_runs_on_the_installed_model(installed_tuneloom, installed_demo):
    """`tuneloom demo` from the venv passes every stage (tests/test_demo.py checks its numbers)
    on the demo model and data inside the installed package."""
    proc = installed_demo.result()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((installed_demo.out / "summary.json").read_text())
    assert s["ok"] is True
    load = next(st for st in s["stages"] if st["stage"] == "load model")
    model = Path(load["model"]).resolve()
    assert model.is_relative_to(installed_tuneloom.site.resolve()) and not model.is_relative_to(ROOT), model
