"""Processes: facts about those on this host (who holds a lock, whose temporary file is
stale), and helper processes of this one (start_child, ChildProcs)."""

import os
import pickle
import subprocess
import sys
import threading
from typing import Optional

from .errors import ChunkrepoError, StorageError


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


def run_child(what: str, serve) -> None:
    """The body of a child of start_child: serve(its Connection to the parent, the other
    descriptors it was given...), then exit; an exception that ends it goes to the parent
    as ("failed", reason) first (ChildProcs raises it there)."""
    from multiprocessing.connection import Connection
    conn_fd, *fds = child_started()
    conn = Connection(conn_fd)
    try:
        serve(conn, *fds)
    except BaseException as e:
        try:
            conn.send(("failed", portable(e, what)))
        except Exception:
            pass
        os._exit(1)
    os._exit(0)


def portable(e: BaseException, what: str) -> BaseException:
    """What a helper process sends its parent for the exception that ends it: a
    chunkrepo error as itself (if it pickles), anything else as a StorageError naming it."""
    if isinstance(e, ChunkrepoError):
        try:
            pickle.loads(pickle.dumps(e))
            return e
        except Exception:
            pass
    return StorageError(f"a {what} failed: {type(e).__name__}: {e}")


class ChildProcs:
    """The parent's side of a group of helper processes (start_child), one Connection
    each and a receiving thread each: how the group fails, ends and is killed.  A
    subclass names itself (`what`, as messages say it) and says which of its Futures
    still wait (_take_pending)."""

    what = "helper process"

    def __init__(self):
        self.lock = threading.Lock()
        self.failure: Optional[BaseException] = None
        self.procs: list = []
        self.conns: list = []
        self.receivers: list = []

    def start_receivers(self, name: str) -> None:
        """One thread per process that hands its messages to handle()."""
        self.receivers = [threading.Thread(target=self._receive, args=(i,), daemon=True,
                                           name=f"chunkrepo-{name}-{i}")
                          for i in range(len(self.procs))]
        for t in self.receivers:
            t.start()

    def _take_pending(self) -> list:
        """The Futures not answered yet, forgotten (under self.lock)."""
        raise NotImplementedError

    def handle(self, i: int, msg: tuple) -> None:
        """A message from process i (other than its "bye" and "failed")."""
        raise NotImplementedError

    def _receive(self, i: int) -> None:
        conn = self.conns[i]
        try:
            while True:
                msg = conn.recv()
                if msg[0] == "bye":
                    return
                if msg[0] == "failed":
                    raise msg[1]
                self.handle(i, msg)
        except (EOFError, OSError):
            self.fail(self.ended(i))
        except BaseException as e:
            self.fail(e)

    def ended(self, i: int) -> "StorageError":
        """The error for process i gone without a word (killed, out of memory)."""
        try:
            rc = self.procs[i].wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        how = f" (killed by signal {-rc})" if rc is not None and rc < 0 else (
            f" (exit status {rc})" if rc else "")
        return StorageError(f"a {self.what} ended unexpectedly{how}")

    def fail(self, e: BaseException) -> None:
        """The group failed with e: every Future still waiting gets it."""
        with self.lock:
            self.failure = self.failure or e
            futs = self._take_pending()
        for f in futs:
            if not f.done():
                f.set_exception(e)

    def close(self) -> None:
        """Tell the processes to end (None), wait for them; raise what failed the group."""
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
        for t in self.receivers:
            t.join()
        for p in self.procs:
            p.wait()
        self.release()
        if self.failure is not None:
            raise self.failure

    def kill(self) -> None:
        """End the processes whatever they are doing (the parent failed or was stopped)."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.release()

    def release(self) -> None:
        """Close the parent's ends of the connections."""
        for c in self.conns:
            c.close()
        self.conns = []
