"""Whether a process still runs, by its id (a run's writer, an export's temporary files, a group's starter)."""
from __future__ import annotations

import os


def pid_alive(pid, *, unsure: bool = False) -> bool:
    """True while the process ``pid`` exists (one of another user's counts: signal 0 is refused, not
    unknown). ``unsure`` is the answer for any other error: True where a wrong "gone" would delete
    something still in use, False where a wrong "running" would only show a stale state."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return unsure
    return True
