"""Where things live: bundled resources, the user's app data, the runs folder."""
from __future__ import annotations

import os
import sys
from pathlib import Path


RESOURCES_PACKAGE = "tuneloom_resources"  # resources/ as the wheel installs it (setup.py maps it in)


def resources_dir() -> Path:
    """The ``resources/`` folder (catalog, demo model and data, icon), wherever Tuneloom runs from.

    * a PyInstaller bundle (the .app, the Linux one-folder app): ``resources/`` in its folder;
    * a source checkout, or an editable install of one (``./dev``): the checkout's ``resources/``;
    * an installed wheel (``pip install .``, ``pipx install .``, ``uv tool install .``): the
      package ``tuneloom_resources`` beside ``core`` in site-packages.
    """
    base = getattr(sys, "_MEIPASS", None)
    if base:
        return Path(base) / "resources"
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "resources").is_dir():
        return checkout / "resources"
    import importlib.util

    spec = importlib.util.find_spec(RESOURCES_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    raise FileNotFoundError(
        f"Tuneloom's resources are missing: neither {checkout / 'resources'} nor an installed package "
        f"{RESOURCES_PACKAGE!r} exists. Reinstall Tuneloom (pip install . from a checkout), or run it "
        "from the checkout with ./dev run.")


def demo_dir() -> Path:
    return resources_dir() / "demo"


def demo_model_dir() -> Path:
    return demo_dir() / "model"


def demo_data_dir() -> Path:
    return demo_dir() / "data"


def app_data_dir() -> Path:
    """Per-user data folder (runs, settings that are not QSettings)."""
    override = os.environ.get("TUNELOOM_HOME")
    if override:
        return Path(override)
    from platformdirs import user_data_dir

    return Path(user_data_dir("Tuneloom", "Tuneloom"))


def runs_dir() -> Path:
    return app_data_dir() / "runs"


def cache_dir() -> Path:
    """Per-user cache (what can be made again: the base models' answers to the forgetting probes)."""
    override = os.environ.get("TUNELOOM_HOME")
    if override:
        return Path(override) / "cache"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("Tuneloom", "Tuneloom"))


def probes_file() -> Path:
    """The bundled forgetting-check probe set (core.drift)."""
    return resources_dir() / "probes.jsonl"
