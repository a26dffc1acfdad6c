"""Atomic file writes: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

# the process's umask, read once at import (os.umask can only be read by setting it, which is not thread-safe)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def new_mode(directory: bool = False) -> int:
    """The permissions a plain new file (0666) or folder (0777) gets here: the umask applied."""
    return (0o777 if directory else 0o666) & ~_UMASK


def replace(tmp: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename ``tmp`` over ``dest`` with the permissions a plain new file would get (0666 less the umask), or
    those of the file it replaces: ``tempfile.mkstemp`` makes 0600 files, which other programs and other
    users (a Linux ``ollama`` service, a shared folder) could not read."""
    dest = Path(dest)
    try:
        mode = stat.S_IMODE(dest.stat().st_mode)
    except FileNotFoundError:
        mode = new_mode()
    os.chmod(tmp, mode)
    os.replace(tmp, dest)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it over ``dest`` on success.

    On any exception the temporary file is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name ends with `suffix` because some writers (mx.save_safetensors) append
    # their extension to any other name
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part" + suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def unique_names(folder: str | os.PathLike, stem: str, suffix: str = "") -> Iterator[Path]:
    """``folder/stem+suffix``, then ``stem-2+suffix``, ``stem-3+suffix``, ...: the names to try, in turn,
    for something new that must never take the place of what is there (a run folder, a crash report).
    The caller creates each one exclusively (``mkdir``, ``open(..., "x")``) and moves on to the next on
    FileExistsError, so two at the same second (two windows, two runs) get two names."""
    folder = Path(folder)
    yield folder / f"{stem}{suffix}"
    n = 2
    while True:
        yield folder / f"{stem}-{n}{suffix}"
        n += 1


def write_text(dest: str | os.PathLike, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(dest: str | os.PathLike, obj) -> None:
    write_text(dest, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_error(exc: OSError, what: str, where: str | os.PathLike):
    """A TuneloomError naming the real cause of a failed write (full disk, read-only folder, no
    permission, a folder where a file should go) instead of the OS's words alone."""
    import errno

    from core.events import TuneloomError

    where = Path(where)
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return TuneloomError(f"Could not write {what}: the disk holding {where} is full.",
                             "Free some space (or choose a folder on another disk) and try again.")
    if code == errno.EROFS:
        return TuneloomError(f"Could not write {what}: {where} is on a read-only disk.",
                             "Choose a folder you can write to.")
    if code in (errno.EACCES, errno.EPERM):
        return TuneloomError(f"Could not write {what}: no permission to write in {where}.",
                             "Choose a folder you can write to, or change its permissions.")
    if code == errno.EISDIR:
        return TuneloomError(f"Could not write {what}: {where} is a folder.", "Give a file name, not a folder.")
    if code == errno.ENAMETOOLONG:
        return TuneloomError(f"Could not write {what}: the name is too long for this disk ({where}).",
                             "Choose a shorter name.")
    return TuneloomError(f"Could not write {what} in {where}: {exc.strerror or exc}.", "")
