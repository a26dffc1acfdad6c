"""Where an export may write, checked before any work (issue 25).

An export never writes into its own source (the model folder; the run folder's own files; only its
``exports/`` folder is the export's), never over a file it did not make (an earlier GGUF may be
replaced when the caller says so: ``--force``), and names the real cause when it cannot write (a
folder given as the file, a read-only disk, no permission, a name too long, a full disk). Each GGUF
gets a Modelfile named after it (``NAME.Modelfile``), so a second export into one folder keeps the
first one's. Temporary files carry the writing process's id, so the next export into a folder
removes what a killed one left (:func:`clean_stale`).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

from core import runs
from core.atomic import write_error
from core.events import TuneloomError
from core.pids import pid_alive

GGUF_MAGIC = b"GGUF"
# temporary names: .<dest name>.<pid>.<random>.part[.gguf] and .tuneloom-fuse-<pid>-<random>/
_PART = re.compile(r"^\..+\.(\d+)\.[^.]+\.part(\.gguf)?$")
_FUSE = re.compile(r"^\.tuneloom-fuse-(\d+)-")


def modelfile_for(gguf: Path) -> Path:
    """The Modelfile that belongs to ``gguf``: ``NAME.Modelfile`` next to ``NAME.gguf``."""
    gguf = Path(gguf)
    return gguf.with_name(f"{gguf.stem}.Modelfile")


def temp_prefix(dest: Path) -> str:
    return f".{Path(dest).name}.{os.getpid()}."


def fuse_prefix() -> str:
    return f".tuneloom-fuse-{os.getpid()}-"


def clean_stale(folder: Path) -> list[Path]:
    """Remove the temporary files and fuse folders that exports killed mid-way left in ``folder`` (those of
    processes that are gone; a running export's are left alone). Returns what was removed."""
    gone = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return gone
    for p in entries:
        m = _PART.match(p.name) or _FUSE.match(p.name)
        if not m or pid_alive(int(m.group(1)), unsure=True):  # unsure: leave the files
            continue
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            gone.append(p)
    return gone


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def _is_gguf(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _modelfile_refs(p: Path) -> dict[str, str]:
    """{"FROM": ..., "ADAPTER": ...} of an existing Modelfile ({}: not a Modelfile)."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(65536).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    refs: dict[str, str] = {}
    for line in head.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word.upper() in ("FROM", "ADAPTER") and word.upper() not in refs:
            refs[word.upper()] = rest.strip().strip('"')
    return refs if "FROM" in refs else {}


def _modelfile_from(p: Path) -> str | None:
    """The FROM of an existing Modelfile (None: not a Modelfile)."""
    return _modelfile_refs(p).get("FROM")


def check_writable(folder: Path, what: str) -> None:
    """Make and remove a small file in ``folder`` (or the nearest folder above it that exists): the real
    reason a write would fail, before any work."""
    p = Path(folder)
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if not p.is_dir():
        raise TuneloomError(f"Cannot write {what}: {p} is a file, not a folder.", "Choose a folder for it.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tuneloom-probe-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise write_error(exc, what, p) from exc


def _name_fits(path: Path, what: str) -> None:
    p = path.parent
    while not p.exists() and p.parent != p:
        p = p.parent
    try:
        limit = os.pathconf(p, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = max(len(part.encode()) for part in path.parts[-1:] + (temp_prefix(path) + "xxxxxxxx.part.gguf",))
    if longest > limit:
        raise write_error(OSError(errno.ENAMETOOLONG, "File name too long"), what, path.parent)


def check_targets(gguf: Path | None, modelfile: Path | None, *, base: Path, adapter: Path | None,
                  replace: bool = False) -> None:
    """Refuse, before any work, a target that is a folder, lies in the export's own source, is a file this
    export did not make, or cannot be written; ``replace``: an existing GGUF (and its Modelfile) may go."""
    run_own = Path(adapter) if adapter is not None else None
    for target, what in ((gguf, "the GGUF"), (modelfile, "the Modelfile")):
        if target is None:
            continue
        target = Path(target)
        if target.is_dir():
            raise TuneloomError(f"{target} is a folder; {what} needs a file name.",
                                f"Give a file in it, e.g. {target / 'model-f16.gguf'}." if what == "the GGUF"
                                else f"Give a file in it, e.g. {target / 'model.Modelfile'}.")
        if _inside(target, base):
            raise TuneloomError(f"{target} is inside the model folder being exported ({base}); writing {what} "
                                f"there could replace the model's own files.", "Choose a folder outside it.")
        if run_own is not None and _inside(target, run_own) and not _inside(target, run_own / runs.EXPORTS):
            raise TuneloomError(f"{target} is inside the run folder being exported ({run_own}); writing {what} "
                                f"there could replace the run's own files.",
                                f"Choose a folder outside it, or the run's exports folder ({run_own / 'exports'}).")
        _name_fits(target, what)
    if gguf is not None and Path(gguf).exists():
        gguf = Path(gguf)
        if not _is_gguf(gguf):
            raise TuneloomError(f"{gguf} already exists and is not a GGUF file; the export does not write over it.",
                                "Choose another file name.")
        managed = run_own is not None and _inside(gguf, run_own / runs.EXPORTS)
        if not (replace or managed):
            raise TuneloomError(f"{gguf} already exists (an earlier export).",
                                "Give another file name, or add --force to replace it (and its Modelfile).")
    if modelfile is not None and Path(modelfile).exists():
        mf = Path(modelfile)
        frm = _modelfile_from(mf)
        if frm is None:
            raise TuneloomError(f"{mf} already exists and is not a Modelfile; the export does not write over it.",
                                "Choose another Modelfile name (--modelfile).")
        # this export's own Modelfile: its FROM (a merged GGUF) or its ADAPTER (an adapter GGUF) is this file
        ours = gguf is not None and Path(gguf).name in {Path(v).name for v in _modelfile_refs(mf).values()}
        managed = run_own is not None and _inside(mf, run_own / runs.EXPORTS)
        if not (ours or replace or managed):
            raise TuneloomError(f"{mf} is the Modelfile of another GGUF ({frm}); the export does not replace it.",
                                f"Give this export's Modelfile its own name (--modelfile "
                                f"{modelfile_for(gguf) if gguf is not None else 'NAME.Modelfile'}), or add --force.")
    for target, what in ((gguf, "the GGUF"), (modelfile, "the Modelfile")):
        if target is not None:
            check_writable(Path(target).parent, what)


# --------------------------------------------------------------------------- folders (MLX, PEFT, LM Studio)
MARKER = ".tuneloom"  # in a folder Tuneloom wrote; a folder without it is the user's


def written_by_tuneloom(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def mark_folder(folder: Path, what: str) -> None:
    """Leave the marker that says Tuneloom wrote ``folder`` (a later export may replace it)."""
    (Path(folder) / MARKER).write_text(f"{what}\n", encoding="utf-8")


def check_folder_target(out_dir: Path, what: str, *, base: Path | None = None, run: Path | None = None,
                        force: bool = False) -> None:
    """The rules of :func:`check_targets` for an export that writes a folder (MLX, PEFT, LM Studio's model
    folder), checked before any work: never a file, never the export's own source (the model folder, the run
    folder outside its ``exports/``, or a folder that holds either), and never over a folder Tuneloom did not
    write (no ``.tuneloom`` marker, not empty) unless ``force``. A folder Tuneloom wrote may be replaced."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TuneloomError(f"{out_dir} is a file; {what} needs a folder.", "Give a new folder's name.")
    if base is not None and (_inside(out_dir, base) or _inside(base, out_dir)):
        raise TuneloomError(f"{out_dir} is the model folder being exported ({base}) or holds it; writing {what} "
                            f"there could replace the model's own files.", "Choose a folder outside it.")
    if run is not None and (_inside(run, out_dir) or (_inside(out_dir, run) and not _inside(out_dir, run / runs.EXPORTS))):
        raise TuneloomError(f"{out_dir} is inside the run folder being exported ({run}) or holds it; writing "
                            f"{what} there could replace the run's own files.",
                            f"Choose a folder outside it, or one in the run's exports folder ({run / 'exports'}).")
    try:
        used = out_dir.is_dir() and any(out_dir.iterdir())
    except OSError as exc:
        raise write_error(exc, what, out_dir) from exc
    if used and not written_by_tuneloom(out_dir) and not force:
        raise TuneloomError(f"{out_dir} exists and was not written by Tuneloom; it is left as it is.",
                            "Choose a new folder, or add --force to replace it.")
    _name_fits(out_dir, what)
    check_writable(out_dir if out_dir.is_dir() else out_dir.parent, what)


def check_file_target(dest: Path, what: str, *, force: bool = False) -> None:
    """A file placed outside the run (LM Studio's models folder): an existing one is replaced only with
    ``force``, and only when it is a GGUF (something else there is never written over)."""
    dest = Path(dest)
    if dest.is_dir():
        raise TuneloomError(f"{dest} is a folder; {what} needs a file name.", "Choose another name.")
    if dest.exists():
        if not _is_gguf(dest):
            raise TuneloomError(f"{dest} already exists and is not a GGUF file; the export does not write over it.",
                                "Choose another name.")
        if not force:
            raise TuneloomError(f"{dest} already exists (an earlier export).",
                                "Export under another name, or add --force to replace it.")
