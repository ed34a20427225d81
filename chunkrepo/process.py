"""Facts about processes on this host (who holds a lock, whose temporary file is stale)."""

import os
import subprocess
import sys


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


def start_child(entry: str, fds: tuple) -> "subprocess.Popen":
    """Start `python -c "from MODULE import FUNC; FUNC()" FD... PARENT_PID` (entry:
    "MODULE:FUNC") with fds passed: a helper process of this one (reader_procs,
    restore_procs).  Not multiprocessing, whose spawn imports the caller's __main__
    again (a library must not do that to a pipeline's script).  The child runs in a
    session of its own, so a Ctrl-C on the terminal reaches this process only; it
    calls child_started() first, which ties its life to ours."""
    module, func = entry.split(":")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen(
        [sys.executable, "-c", f"from {module} import {func}; {func}()", *map(str, fds), str(os.getpid())],
        pass_fds=fds, stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def child_started() -> list:
    """In a child of start_child: ignore SIGINT (the parent decides when to stop), die
    with the parent (PR_SET_PDEATHSIG), and return the descriptors it was given."""
    import ctypes
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    *fds, parent = map(int, sys.argv[1:])
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)    # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)      # the parent died before the line above
    return fds
