"""Put an exported GGUF where LM Studio finds it.

LM Studio lists every model file under its models folder as ``<publisher>/<model>/<file>.gguf``:
``~/.lmstudio/models`` unless its ``settings.json`` (``~/.lmstudio/settings.json``) names another
``downloadsFolder``, which is how LM Studio's own ``lms import`` decides. When ``lms`` is on PATH
it does the placing (``lms import FILE --yes --user-repo PUBLISHER/MODEL --copy``), so LM Studio's
own rules apply; otherwise the file is copied there (hard-linked when on the same drive).
Nothing is written outside ``<models>/<publisher>/<model>/``; an existing file of the same name is
replaced only when asked (``force``: ``--force``, the window's "Replace the existing file"), and only
when it is a GGUF; a model folder there that Tuneloom did not write (no ``.tuneloom`` marker) is left
alone unless forced, as core.export.target does for every export. The GGUF carries the chat template
Tuneloom embeds, so LM Studio's chat builds the training prompt.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from core.events import NULL_EVENTS, Events, TuneloomError

PUBLISHER = "tuneloom"


def lmstudio_home() -> Path:
    return Path(os.path.expanduser("~")) / ".lmstudio"


def models_dir() -> Path:
    """LM Studio's models folder: settings.json's ``downloadsFolder``, else ``~/.lmstudio/models``."""
    settings = lmstudio_home() / "settings.json"
    try:
        folder = json.loads(settings.read_text(encoding="utf-8")).get("downloadsFolder")
        if isinstance(folder, str) and folder:
            return Path(os.path.expanduser(folder))
    except (OSError, ValueError, AttributeError):
        pass
    return lmstudio_home() / "models"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def target_path(gguf: str | Path, model: str, publisher: str = PUBLISHER) -> Path:
    return models_dir() / _safe(publisher) / _safe(model) / Path(gguf).name


def place_gguf(gguf: str | Path, model: str, *, publisher: str = PUBLISHER, use_lms: bool | None = None,
               events: Events | None = None, force: bool = False) -> dict:
    """Place ``gguf`` in LM Studio's models folder as ``<publisher>/<model>/<file>``; returns
    ``{"path", "method": "lms import" | "hard link" | "copy", "models_dir"}``. ``use_lms``: None = when ``lms``
    is on PATH."""
    events = events or NULL_EVENTS
    gguf = Path(gguf)
    if not gguf.is_file() or gguf.suffix.lower() != ".gguf":
        raise TuneloomError(f"{gguf} is not a GGUF file.", "Export the GGUF first (--gguf OUT.gguf).")
    from core.export.target import _is_gguf, check_folder_target, mark_folder

    dest = target_path(gguf, model, publisher)
    check_folder_target(dest.parent, "the LM Studio model", force=force)
    if dest.exists() and not (force and dest.is_file() and _is_gguf(dest)):
        raise TuneloomError(f"LM Studio already has {dest}; Tuneloom does not replace it"
                            + (" (it is not a GGUF file)." if force else " unless asked."),
                            "Remove it in LM Studio (My Models) or export under another name"
                            + ("." if force else ", or add --force to replace it."))
    # lms import does not replace a file: a replacement is placed here (atomically, below)
    lms = shutil.which("lms") if use_lms is not False and not dest.exists() else None
    if lms:
        events.log("info", f"lms import {gguf} --user-repo {_safe(publisher)}/{_safe(model)}")
        proc = subprocess.run([lms, "import", str(gguf), "--yes", "--user-repo", f"{_safe(publisher)}/{_safe(model)}",
                               "--copy"], capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise TuneloomError(f"`lms import` failed (exit {proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-400:]}",
                                f"Copy {gguf} to {dest.parent} by hand, or try again with LM Studio open.")
        if not dest.is_file():  # lms may use a models folder of its own choosing: say where it went
            events.log("info", (proc.stdout or proc.stderr).strip()[-300:])
        elif dest.parent.is_dir():
            mark_folder(dest.parent, "lmstudio")
        return {"path": str(dest), "method": "lms import", "models_dir": str(models_dir())}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        try:
            os.link(gguf, tmp)
            method = "hard link"
        except OSError:
            shutil.copyfile(gguf, tmp)
            method = "copy"
        os.replace(tmp, dest)
        mark_folder(dest.parent, "lmstudio")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TuneloomError(f"Could not place {gguf.name} in {dest.parent}: {exc}",
                            "Check that LM Studio's models folder is writable and has space.") from exc
    events.log("info", f"LM Studio: {dest} ({method})")
    return {"path": str(dest), "method": method, "models_dir": str(models_dir())}
