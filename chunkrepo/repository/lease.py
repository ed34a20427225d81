"""The writer lock of a repository on an object store: a lock object with a lease.

The object `lock` holds JSON {token, pid, host, since, expires, lease}.  It is
created with a conditional PUT (storage.put_if_absent: `If-None-Match: *` on
S3), so of two writers starting together exactly one gets it.  A background
thread rewrites it every `refresh` seconds with a new expiry while the writer
works; a writer killed without releasing leaves a lock that expires `lease`
seconds after its last refresh and is then taken over (with a warning).  An
unexpired lock is reported with its holder and age; `chunkrepo unlock` removes
it.  If the refresher finds the lock gone or someone else's (it expired while
the writer was stalled, or was removed by unlock), the lock is lost.  The
refresher runs only every `refresh` seconds, and a stopped process (SIGSTOP, a
suspended VM) runs none of it: so check(), called before each step that makes
something durable which depends on what the writer saw (its backup record,
deleting packs or backup records), reads the lock object again (one GET) and
fails if it is no longer this writer's.

Expiry is judged by the local clock against the holder's: hosts whose clocks
differ by more than a fraction of the lease are not supported.  Taking over
deletes the expired object and creates a new one; two takers racing there are
told apart by re-reading the lock after creating it.
"""

import datetime
import json
import logging
import os
import socket
import threading
import time
from typing import Optional

from ..errors import LockLost, NotFound, RepoLocked
from ..process import pid_alive
from .lock import _age

log = logging.getLogger("chunkrepo")

LOCK_NAME = "lock"
LEASE_ENV = "CHUNKREPO_LOCK_LEASE"         # seconds a lock lives without a refresh (default 60)
REFRESH_ENV = "CHUNKREPO_LOCK_REFRESH"     # seconds between refreshes (default 20)


class LeaseLock:
    def __init__(self, storage, lease: Optional[float] = None, refresh: Optional[float] = None,
                 name: str = LOCK_NAME):
        self.storage = storage
        self.name = name
        self.lease = lease or float(os.environ.get(LEASE_ENV, "60"))
        self.refresh = refresh or min(float(os.environ.get(REFRESH_ENV, "20")), self.lease / 3)
        self.token = os.urandom(16).hex()
        self._since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lost: Optional[str] = None

    def _record(self) -> bytes:
        return json.dumps({"token": self.token, "pid": os.getpid(), "host": socket.gethostname(),
                           "since": self._since, "expires": time.time() + self.lease,
                           "lease": self.lease}).encode()

    def acquire(self) -> None:
        if not self.storage.put_if_absent(self.name, self._record()):
            held = read_lock(self.storage, self.name)
            if held is not None and not _expired(held):
                raise RepoLocked(f"repository is locked by {describe(held)}; if that writer is gone, "
                                 f"wait for its lease to expire or run 'chunkrepo unlock'")
            log.warning("chunkrepo: taking over the lock of %s: its lease expired",
                        describe(held) if held else "a writer")
            try:
                self.storage.delete(self.name)
            except NotFound:
                pass
            if not self.storage.put_if_absent(self.name, self._record()):
                raise RepoLocked(f"repository is locked by {describe(read_lock(self.storage, self.name))}")
            if not self._verify():          # another taker deleted ours in the same moment
                raise RepoLocked(f"lost the repository lock while taking it over: {self.lost}")
        self._thread = threading.Thread(target=self._refresher, name="chunkrepo-lease", daemon=True)
        self._thread.start()

    def _verify(self) -> bool:
        held = read_lock(self.storage, self.name)
        if held is None or held.get("token") != self.token:
            self.lost = f"now held by {describe(held)}" if held else "the lock object was removed"
            return False
        return True

    def _refresher(self) -> None:
        while not self._stop.wait(self.refresh):
            try:
                if not self._verify():
                    return
                self.storage.put(self.name, self._record())
            except Exception as e:     # a failed refresh is retried; the lease has slack
                log.warning("chunkrepo: could not refresh the repository lock: %s", e)

    def check(self) -> None:
        """LockLost unless the lock object is still this writer's (read again: one GET)."""
        if not self.lost:
            self._verify()
        if self.lost:
            raise LockLost(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self.lost is None and self._verify():
                try:
                    self.storage.delete(self.name)
                except NotFound:
                    pass

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def read_lock(storage, name: str = LOCK_NAME) -> Optional[dict]:
    try:
        raw = storage.get(name)
    except NotFound:
        return None
    try:
        d = json.loads(raw)
        return d if isinstance(d, dict) else {}
    except ValueError:
        return {}


def live_lock(storage, name: str = LOCK_NAME) -> Optional[str]:
    """Who holds the lock object, if its lease has not expired (a writer that seems to run)."""
    held = read_lock(storage, name)
    return describe(held) if held is not None and not _expired(held) else None


def _expired(held: dict) -> bool:
    try:
        return float(held["expires"]) < time.time()
    except (KeyError, TypeError, ValueError):
        return False        # an unreadable lock is never taken over silently: unlock removes it


def describe(held: dict) -> str:
    """'PID 123 on HOST since TIME (5 minutes ago), lease expires in 40 s'"""
    try:
        since = datetime.datetime.fromisoformat(held["since"])
        age = _age(datetime.datetime.now(since.tzinfo) - since)
        left = float(held["expires"]) - time.time()
        lease = f"lease expires in {left:.0f} s" if left >= 0 else f"lease expired {-left:.0f} s ago"
        return f"PID {held['pid']} on {held['host']} since {held['since']} ({age} ago, {lease})"
    except (KeyError, TypeError, ValueError):
        return "another writer (unreadable lock object)"


def break_lock(storage, name: str = LOCK_NAME) -> Optional[str]:
    """Remove the lock object; who held it, or None if there was none.  For `chunkrepo unlock`."""
    held = read_lock(storage, name)
    if held is None:
        return None
    if held.get("host") == socket.gethostname() and pid_alive(held.get("pid")) and not _expired(held):
        raise RepoLocked(f"repository is locked by {describe(held)}, which is still running: not unlocked")
    try:
        storage.delete(name)
    except NotFound:
        pass
    return describe(held)

