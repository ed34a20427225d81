"""Facts about processes on this host (who holds a lock, whose temporary file is stale)."""

import os


def pid_alive(pid) -> bool:
    """Whether a process with this id runs on this host (this process included)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # it exists, under another user
        return True
    return True
