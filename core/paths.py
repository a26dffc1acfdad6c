"""Where things live: bundled resources, the user's app data, the runs folder."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def resources_dir() -> Path:
    """The ``resources/`` folder, in a source checkout or inside a PyInstaller bundle."""
    base = getattr(sys, "_MEIPASS", None)
    if base:
        return Path(base) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"


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
