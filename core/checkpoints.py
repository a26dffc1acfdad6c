"""Checkpoints that are verified before they are trusted.

A checkpoint folder (``checkpoints/step-N/``) records, in its ``state.json``, the size and the
SHA-256 of every file it holds and a fingerprint of the run's config. On resume the newest one that
verifies is used: a damaged one (truncated adapters or optimizer state, an empty state.json, a
file that does not load) is set aside as ``damaged-step-N`` with a message, and the one before it
is tried. A checkpoint written for another config is refused, never loaded over this run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from core.events import TuneloomError

CHECKPOINT_FILES = ("adapters.safetensors", "optimizer.safetensors", "adapter_config.json")
# config keys that do not change what a checkpoint holds (where the run is kept, what it is called)
_NOT_FINGERPRINTED = ("out", "name")
# results the trainer writes into config.json while it runs (core.train.best): a new best validation
# after the last checkpoint must not make that checkpoint look like another run's
_RESULTS = ("best_step", "best_valid_loss")


def file_record(path: Path) -> dict:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def config_fingerprint(config: dict | None, *, results: bool = False) -> str | None:
    """The fingerprint of the run's options (not where it is kept, not the results written while it runs).
    ``results=True``: the fingerprint checkpoints written before this rule recorded (best_step included)."""
    if not isinstance(config, dict):
        return None
    left_out = _NOT_FINGERPRINTED if results else _NOT_FINGERPRINTED + _RESULTS
    kept = {k: v for k, v in config.items() if k not in left_out}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_state(folder: Path, step: int, config: dict | None) -> dict:
    """state.json of a checkpoint whose files are written in ``folder``: the step, each file's size and
    checksum, and the config's fingerprint."""
    files = {n: file_record(folder / n) for n in CHECKPOINT_FILES if (folder / n).is_file()}
    return {"step": step, "files": files, "config": config_fingerprint(config)}


def step_of(ck: Path) -> int:
    try:
        return int(ck.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def problem(ck: Path) -> str | None:
    """What is wrong with checkpoint folder ``ck`` (None when every recorded file is intact)."""
    try:
        state = json.loads((ck / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"its state.json cannot be read ({type(exc).__name__}: {exc})" if (ck / "state.json").exists() \
            else "it has no state.json"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return "its state.json holds no step"
    files = state.get("files")
    if not isinstance(files, dict):  # written before checksums were recorded: the files must at least be there
        missing = [n for n in ("adapters.safetensors", "optimizer.safetensors")
                   if not (ck / n).is_file() or (ck / n).stat().st_size == 0]
        return f"{', '.join(missing)} missing or empty" if missing else None
    for name, rec in files.items():
        p = ck / name
        if not p.is_file():
            return f"{name} is missing"
        size = p.stat().st_size
        if isinstance(rec, dict) and rec.get("size") != size:
            return f"{name} has {size} bytes, {rec.get('size')} were written"
        if isinstance(rec, dict) and rec.get("sha256") and file_record(p)["sha256"] != rec["sha256"]:
            return f"{name} has changed since it was written (checksum)"
    return None


def belongs_to(ck: Path, config: dict | None) -> bool:
    """Whether the checkpoint was written for this config (True for checkpoints that recorded none).
    Checkpoints of earlier versions fingerprinted the best step too: theirs is accepted when it matches
    the config as it is now, or the config without a best (written before the first validation)."""
    try:
        rec = json.loads((ck / "state.json").read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError, AttributeError):
        return True
    return rec is None or rec in (config_fingerprint(config), config_fingerprint(config, results=True))


def set_aside(ck: Path, prefix: str = "damaged") -> Path:
    """Rename a checkpoint folder so that it is never resumed from (kept for a person to look at)."""
    dest = ck.with_name(f"{prefix}-{ck.name}")
    if dest.exists():
        shutil.rmtree(dest, ignore_errors=True)
    os.replace(ck, dest)
    return dest


def candidates(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, newest first."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    found = [c for c in d.iterdir() if c.is_dir() and c.name.startswith("step-") and step_of(c) >= 0]
    return sorted(found, key=step_of, reverse=True)


def clean_partial(run_dir: Path) -> list[Path]:
    """Remove half-written checkpoints (``.step-N.part/``) an interrupted write left; only call this
    while holding the run's lock. Returns what was removed."""
    d = Path(run_dir) / "checkpoints"
    gone = []
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith(".step-") and p.name.endswith(".part"):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p)
    return gone


def newest_intact(run_dir: Path) -> Path | None:
    for ck in candidates(run_dir):
        if problem(ck) is None:
            return ck
    return None


def check_run_adapter(adapter_dir: Path) -> None:
    """Refuse a damaged ``adapters.safetensors`` with a message naming the file and the checkpoint its
    adapters can be taken from, instead of the loader's traceback."""
    import mlx.core as mx

    path = Path(adapter_dir) / "adapters.safetensors"
    try:
        mx.load(str(path))
        return
    except FileNotFoundError:
        return  # the callers say "no adapters yet"
    except Exception as exc:  # noqa: BLE001 - mlx raises RuntimeError / ValueError for a damaged file
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    ck = newest_intact(adapter_dir)
    if ck is not None:
        hint = (f"Its newest intact checkpoint is {ck} (the adapters at step {step_of(ck)}): copy "
                f"{ck / 'adapters.safetensors'} to {path} to use them, or resume or train the run again.")
    else:
        hint = "The run has no intact checkpoint to take them from: train it again."
    raise TuneloomError(f"{path} is damaged and cannot be read ({why}).", hint)
