"""The local index of a repository on an object store, and the generation marker.

The store is the truth; the LMDB index of a remote repository is a cache in
INDEX_CACHE/<repo id>/index (paths.index_cache_dir()).  The object `generation`
in the store holds a random token that every writer replaces twice: when it
starts (after taking the lock, before it changes anything) and when it ends.
The cache records the token it reflects in its meta table; between a writer's
two tokens the writer's own cache records none ("dirty"), so a writer killed
part-way leaves a cache that is never trusted again.

Opening a remote repository compares the tokens; if they differ the cache is
brought up to date under a local flock (INDEX_CACHE/<repo id>/lock):

* incrementally, when the cache is clean and the store only grew since (every
  pack and backup record the cache knows is still in the store, and no pack
  awaits deletion): the write session's recovery adopts the new packs and
  backup records, as it does after a crash;
* otherwise by emptying the cache and adopting everything (rebuild-index).

A local writer holds the flock for its whole session: a reader of the same host
then uses the cache as it is (that writer keeps it current); a second writer
is refused by the lease in the store.  Readers take no lock in the store.
"""

import fcntl
import logging
import os
import shutil

from .. import paths
from ..errors import IndexDamaged, LockLost, NotFound
from .lease import LeaseLock
from .packs import pack_id_from_name
from .session import WriteSession

log = logging.getLogger("chunkrepo")

GENERATION_NAME = "generation"
_META = "generation"        # the token this cache reflects; b"" while a local writer works


class IndexCache:
    def __init__(self, storage, repo_id: str):
        self.storage = storage
        self.dir = os.path.join(paths.index_cache_dir(), repo_id)
        self.index_path = os.path.join(self.dir, "index")
        self.due = True     # sync() has yet to compare generations (Repository.index calls it)
        self._fd = None

    # -- the local flock ------------------------------------------------------
    def lock(self, wait: bool = True) -> bool:
        """Take the flock (the holder writes its role: 'sync', then 'write' for a writer).

        With wait=False, False if a local writer holds it: that writer keeps the
        cache current, so a reader can use it as it is."""
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait and os.pread(fd, 16, 0) == b"write":
                os.close(fd)
                return False
            log.warning("chunkrepo: waiting for another chunkrepo process updating the index cache %s", self.dir)
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        self._role(b"sync")
        return True

    def _role(self, role: bytes) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, role, 0)

    def unlock(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def open_index(self, acquire):
        """acquire(index path) -> the Index; a cache too damaged to open is replaced
        by an empty one (sync() then refills it from the store)."""
        try:
            return acquire(self.index_path)
        except IndexDamaged:
            self.lock()
            try:
                log.warning("chunkrepo: the index cache %s is damaged: it is refilled from the store",
                            self.index_path)
                shutil.rmtree(self.index_path, ignore_errors=True)
                return acquire(self.index_path)
            finally:
                self.unlock()

    # -- generations ----------------------------------------------------------
    def store_generation(self) -> bytes:
        try:
            return self.storage.get(GENERATION_NAME)
        except NotFound:
            return b"none"      # a repository no writer has committed to yet

    def _cached_generation(self, index):
        with index.read() as v:
            return v.meta(_META)

    def _record(self, index, token: bytes) -> None:
        with index.write() as w:
            w.put_meta(_META, token)

    def _new_generation(self) -> bytes:
        token = os.urandom(16).hex().encode()
        self.storage.put(GENERATION_NAME, token)
        return token

    # -- syncing --------------------------------------------------------------
    def sync(self, repo) -> None:
        """Bring the cache up to date with the store if its generation differs."""
        self.due = False
        try:
            if self._cached_generation(repo.index) == self.store_generation():
                return
            if not self.lock(wait=False):
                return      # a writer of this host holds the store lock and keeps this cache current
            try:
                self._sync_locked(repo)
            finally:
                self.unlock()
        except BaseException:
            self.due = True
            raise

    def _sync_locked(self, repo, full: bool = False) -> dict:
        gen = self.store_generation()          # read first: a writer committing meanwhile bumps it again
        if not full and self._cached_generation(repo.index) == gen:
            return {}
        if full or not self._only_grew(repo):
            with repo.index.write() as w:
                w.clear()
        got = WriteSession(repo).recover()
        self._record(repo.index, gen)
        for name in got["damaged_packs"]:
            log.warning("chunkrepo: %s: damaged trailer; %d of its blobs verified and were adopted",
                        name, got["salvaged_blobs"].get(name, 0))
        for bid in got["unregistered_backups"]:
            log.warning("chunkrepo: backup %s: some of its records are missing; not registered", bid)
        return got

    def _only_grew(self, repo) -> bool:
        with repo.index.read() as v:
            if not v.meta(_META):
                return False        # never synced, or a local writer died part-way
            if any(True for _ in v.pending()):
                return False
            packs = {pid for pid, _ in v.all_packs()}
            backups = {bid for bid, _ in v.backups()}
        return (packs <= {pack_id_from_name(n) for n in self.storage.list("packs")}
                and backups <= {n.rsplit("/", 1)[1] for n in self.storage.list("backups")})

    def rebuild(self, repo) -> dict:
        """Empty the cache and adopt everything in the store (rebuild-index); a new
        file, not an emptied one: emptying walks the pages of a damaged index."""
        self.lock()
        try:
            repo.index.recreate()
            return self._sync_locked(repo, full=True)
        finally:
            self.unlock()

    # -- a writer's session ---------------------------------------------------
    def begin_write(self, repo) -> bytes:
        """Under the store lock: sync, mark the cache dirty, bump the store's generation;
        returns the new token (another writer that begins replaces it: end_write).

        The sync reads `generation` after the lease is taken (a writer that finished
        meanwhile bumped it), so a read before the lease would be wasted: none is made."""
        self.due = False
        self.lock()
        try:
            self._sync_locked(repo)
            self._record(repo.index, b"")
            token = self._new_generation()
            self._role(b"write")
        except BaseException:
            self.due = True
            self.unlock()
            raise
        return token

    def end_write(self, repo, began: bytes) -> None:
        """The writer is done (committed, failed, or lost its lock): a new generation, so
        every cache looks at what it changed.  Recorded here only if the store's token is
        still the one this writer wrote when it began: otherwise another writer began
        meanwhile (this one's lock was removed, or expired while it was stopped), and this
        cache misses what that one did; it stays dirty and the next open rebuilds it."""
        try:
            current = self.store_generation() == began
            token = self._new_generation()
            if current:
                self._record(repo.index, token)
        finally:
            self.unlock()


class RemoteWriterLock:
    """A writer of a remote repository: the lease in the store, then the cache's generation protocol."""

    def __init__(self, repo):
        self.repo = repo
        self.lease = LeaseLock(repo.storage)
        self._began = b""       # the generation this writer wrote when it began

    def acquire(self) -> None:
        self.lease.acquire()
        try:
            self._began = self.repo.cache.begin_write(self.repo)
        except BaseException:
            self.lease.release()
            raise

    def check(self) -> None:
        """LockLost unless the lock object is still this writer's and no other writer
        began since this one did (the store's generation is still this writer's): two
        GETs before each durable step (docs/format.md, "Checks before durable steps")."""
        self.lease.check()
        if self.repo.cache.store_generation() != self._began:
            raise LockLost("another writer began meanwhile: the store's generation changed")

    def release(self) -> None:
        try:
            self.repo.cache.end_write(self.repo, self._began)
        finally:
            self.lease.release()
