"""One writer per run folder: an OS lock (flock) held while a process writes the run, and
:func:`claim_run`, which refuses a folder that holds another run."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from core.events import TuneloomError
from core.runs.files import RUN_FILES, make_status_reserve, read_json

try:
    import fcntl
except ImportError:  # not on Windows, which Tuneloom does not run on; no lock there
    fcntl = None

# the file whose OS lock (flock) says a process is writing the run; the lock dies with the process
LOCK_NAME = ".lock"


class RunFolderTaken(TuneloomError):
    """The folder holds another run, or another process is writing it."""


class RunFinished(TuneloomError):
    """``--resume`` of a run that has done all its steps: there is nothing to train."""


def _lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK_NAME


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the process writing ``run_dir`` (as it wrote it in the lock file; 0 if unreadable), or
    None when no process holds the run's lock. Reads only: no file is made."""
    if fcntl is None:
        return None
    try:
        fd = os.open(_lock_path(run_dir), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            try:
                return int(os.read(fd, 32).decode("ascii", "replace").split()[0])
            except (OSError, ValueError, IndexError):
                return 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def run_locked_by_other(run_dir: Path) -> bool:
    """Whether a process (another one, or another writer in this one) is writing ``run_dir`` now: the
    GUI shows such a run as being trained and starts no second writer on it. Qt-free, reads only."""
    return lock_holder(run_dir) is not None


LOCK_ATTEMPTS = 20  # a reader's shared lock lasts an instant; a writer's, the whole run


class RunLock:
    """An exclusive OS lock on a run folder, held while this process writes it.

    ``flock`` on ``RUN/.lock``: the kernel drops it when the process ends however it ends (a kill, a
    crash), so a dead run never leaves a stale lock. The file stays (removing it would race)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        if fcntl is None:
            return self
        fd = os.open(_lock_path(self.run_dir), os.O_RDWR | os.O_CREAT, 0o666)
        for attempt in range(LOCK_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                # a reader looking (lock_holder: the window's History and Export pages) holds a shared lock
                # for an instant; only a lock still held by a writer means another process trains the run
                if attempt + 1 < LOCK_ATTEMPTS and lock_holder(self.run_dir) is None:
                    time.sleep(0.01)
                    continue
                os.close(fd)
                pid = lock_holder(self.run_dir)
                raise RunFolderTaken(
                    f"{self.run_dir} is being trained by another process"
                    + (f" (pid {pid})" if pid else "") + ".",
                    "Wait until it ends, or stop it first; give a new run a folder of its own (another --out).")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def run_contents(run_dir: Path) -> list[str]:
    """The files of a run that ``run_dir`` already holds (empty for a new or an empty folder)."""
    d = Path(run_dir)
    return [n for n in RUN_FILES if (d / n).exists()] if d.is_dir() else []


@contextlib.contextmanager
def claim_run(run_dir: Path, resume: bool = False):
    """Hold ``run_dir`` for this process while the block writes it.

    A new run (``resume=False``) is refused, before anything in the folder changes, when the folder
    already holds a run (its config, status, metrics, adapters or checkpoints), with the fix; a run
    another process is writing is refused at once. The lock is released when the block ends."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderTaken(f"{run_dir} is a file, not a folder.", "Give the run a folder of its own (--out).")

    def refuse_taken():
        found = run_contents(run_dir)
        if found:
            st = read_json(run_dir / "status.json", {})
            state = st.get("state") if isinstance(st, dict) else None
            raise RunFolderTaken(
                f"{run_dir} already holds a run ({', '.join(found)}"
                + (f"; {state}" if isinstance(state, str) else "") + "); a new run would mix with it.",
                f"Give the new run another folder (--out NEW_FOLDER, or leave --out out), or continue that run "
                f"with `tuneloom train --resume {run_dir}`.")

    if not resume:
        if lock_holder(run_dir) is not None:
            RunLock(run_dir).acquire()  # raises: being trained by another process
        refuse_taken()
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        raise RunFolderTaken(f"{run_dir} does not exist.", "Pick a run folder under runs/ (tuneloom runs).")
    lock = RunLock(run_dir).acquire()
    try:
        if not resume:
            refuse_taken()  # another process may have started one between the check and the lock
        else:
            from core.checkpoints import clean_partial

            clean_partial(run_dir)  # what an interrupted checkpoint write left
        make_status_reserve(run_dir)
        yield lock
    finally:
        lock.release()
