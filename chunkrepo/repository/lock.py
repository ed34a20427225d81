"""The writer lock of a local repository: flock on REPO/lock plus who holds it.

flock is released by the kernel when the holder dies, so a kill -9 never
leaves a stale lock on the same host.  Readers take no lock, except one that
cannot write the repository (ReaderLock).
"""

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from typing import Optional

from ..errors import LockLost, ReadOnlyRepository, RepoLocked
from ..process import pid_alive
from .crash_points import crash_point

log = logging.getLogger("chunkrepo")
# who holds the lock without having written who it is (a ReaderLock never writes)
_UNNAMED_HOLDER = "another process (a writer starting, or a reader that cannot write the repository)"
_REOPENS = 100     # times acquire() follows a lock file removed or replaced under it


class WriterLock:
    def __init__(self, path: str):
        self.path = path
        self._fd = None

    def acquire(self) -> None:
        for _ in range(_REOPENS):
            fd = self._open_locked()
            if _replaced(self.path, fd) is None:
                break
            # removed or replaced between our open and our flock: another writer may
            # have locked the file the path names now; lock that one (or be refused)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        else:
            raise RepoLocked(f"{self.path} was removed or replaced {_REOPENS} times while this writer "
                             f"took the lock: not taken")
        try:
            left = os.pread(fd, 4096, 0)
        except OSError:
            left = b""
        if left.strip():     # release() empties the file: its writer died, or runs elsewhere
            if _other_host(left):
                # flock may not reach across hosts (network file systems): never take that over
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise RepoLocked(f"repository is locked by {_describe(left)}; if that writer is gone, "
                                 f"run 'chunkrepo unlock'")
            log.warning("chunkrepo: taking over the lock of %s: that writer is gone", _describe(left))
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
        except OSError:
            pass   # who holds it is only advice; a full disk must not keep a lock half taken
        self._fd = fd

    def _open_locked(self) -> int:
        """A descriptor of the file self.path names, flocked (RepoLocked if another holds it)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise read_only_error(os.path.dirname(self.path), f"{self.path}: {e.strerror}") from None
            raise
        crash_point("lock-opened")     # (tests: REPO/lock replaced between the open and the flock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.pread(fd, 4096, 0)
            os.close(fd)
            holder = _describe(raw) if raw.strip() else _UNNAMED_HOLDER
            raise RepoLocked(f"repository is locked by {holder}") from None
        return fd

    def check(self) -> None:
        """LockLost unless self.path still names the file this writer holds its flock on.

        The flock itself cannot be lost while its holder lives, but its file can be
        removed (`rm REPO/lock`, as for a stale lock file of other tools) or replaced:
        then the next writer creates and locks a new file while this one works.  So,
        as for a lease (repository.lease), the session calls this before each durable
        step (docs/format.md, Locking)."""
        if self._fd is not None:
            why = _replaced(self.path, self._fd)
            if why is not None:
                raise LockLost(why)

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass     # the holder info is advice; the flock must still go
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


class ReaderLock:
    """A shared flock on REPO/lock, held by a reader that cannot write the repository
    while it is open (docs/design.md, "Read-only repositories").

    Such a reader opens the index without its lock file, so it is not registered
    as a reader there and a writer could reuse the pages it is reading; with this
    lock no writer runs meanwhile (a writer's exclusive flock is refused while it
    is held, and the reader is refused while a writer holds it).  flock needs
    only a descriptor open for reading, on a read-only file system too.  Taken in
    the constructor; a repository without a readable lock file (never written,
    or unreadable to this user) is read without it."""

    def __init__(self, path: str):
        self._fd = None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, PermissionError):
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise RepoLocked(f"repository is locked by {holder}: a process that cannot write the repository "
                             f"reads it only while no writer runs; try again when it is done") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)     # and with it the flock
            self._fd = None


def read_only_error(path: str, reason: str) -> ReadOnlyRepository:
    return ReadOnlyRepository(f"cannot write the repository {path} ({reason}); commands that only read "
                              f"it work: list-backups, ls, tar, restore, diff, check without --repair")


def _replaced(path: str, fd: int) -> Optional[str]:
    """None if path names the file open as fd; else what became of it."""
    held = os.fstat(fd)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return f"{path} was removed"
    except OSError as e:
        return f"{path} cannot be examined: {e.strerror}"
    if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
    except OSError:
        raw = b""
    return f"{path} was replaced" + (f": now held by {_describe(raw)}" if raw.strip() else "")


def _other_host(raw: bytes) -> bool:
    try:
        return json.loads(raw)["host"] != socket.gethostname()
    except (ValueError, KeyError, TypeError):
        return False


def _describe(raw: bytes) -> str:
    """'PID 123 on HOST since TIME (5 minutes ago)' from the holder info."""
    try:
        d = json.loads(raw)
        since = datetime.datetime.fromisoformat(d["since"])
        elsewhere = d["host"] != socket.gethostname()
        text = f"PID {d['pid']} on {d['host']}{' (another host)' if elsewhere else ''} since {d['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"
    return f"{text} ({_age(datetime.datetime.now(since.tzinfo) - since)} ago)"


def _age(delta: datetime.timedelta) -> str:
    secs = max(0, int(delta.total_seconds()))
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= n:
            k = secs // n
            return f"{k} {unit}{'s' if k != 1 else ''}"
    return f"{secs} second{'s' if secs != 1 else ''}"


def live_holder(path: str) -> Optional[str]:
    """Who the holder info of the lock at path names, if that process lives (or runs on
    another host, where this cannot be told): a writer that seems to run now.  Takes no
    lock (a prune --dry-run asks, which must never make a writer's flock fail)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
        d = json.loads(raw)
        pid, host = int(d["pid"]), d["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host == socket.gethostname() and not pid_alive(pid):
        return None
    return _describe(raw)


def inspect_lock(path: str) -> tuple:
    """(held, description): is a live writer holding the lock, and who it was.

    Used by `chunkrepo unlock`.  A lock held by a live process is never
    broken; holder info left behind by a dead process (flock is already
    free) is cleared.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False, None
    try:
        info = os.pread(fd, 4096, 0)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _describe(info)
        try:
            if info:
                os.ftruncate(fd, 0)
            return False, _describe(info) if info else None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
