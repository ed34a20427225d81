"""Repository: opens a repository (a local directory or a URL) and reads blobs, trees and backups."""

import logging
import os
import threading
from typing import Dict, List, NamedTuple, Optional

from ..codec import compression, records
from ..codec.hashing import hash_bytes
from ..errors import LOST_WHY, AmbiguousId, ChunkrepoError, IntegrityError, NotARepository, NotFound
from ..index import Index, read_only_reason
from ..model import BackupRecord, Tree
from ..storage import LocalStorage
from ..storage.open import is_url, local_path, open_remote, parse_options
from ..storage.retry import is_transient
from . import index_dirs
from .config import CONFIG_NAME, Config
from .index_cache import IndexCache, RemoteWriterLock
from .lease import live_lock
from .lock import ReaderLock, WriterLock, live_holder, read_only_error
from .packs import pack_name
from .session import WriteSession

log = logging.getLogger("chunkrepo")

_COALESCE_LIMIT = 8 << 20   # longest single read that serves several neighbouring blobs


class ReadPlan(NamedTuple):
    threads: int        # readers of ops.prefetch
    batch_bytes: int    # raw bytes of chunks per read task
    max_gap: int        # bytes of other blobs one ranged read may carry along


_LOCAL_PLAN = ReadPlan(2, 2 << 20, 0)
# 2 readers of 4 MiB tasks (coalescing gaps up to 256 KiB).  With the native S3 client a GET
# costs ~0.5 ms of CPU, so readers mostly wait; on Ceph RGW on loopback 2, 3 or 4 readers
# restore in the same time, and each one more adds ~5 MiB of peak RSS (8 x 8 MiB, sized for
# s3fs: 160-170 MiB; 2 x 4 MiB: ~93 MiB, what a local restore takes).  A link with a long
# round trip would want more readers (docs/design.md, "Repositories on object stores").
_REMOTE_PLAN = ReadPlan(2, 4 << 20, 256 << 10)
_open_envs: Dict[str, list] = {}   # LMDB allows one Environment per path per process
_open_envs_lock = threading.Lock()


def _acquire_index(path: str, readonly: bool = False) -> Index:
    with _open_envs_lock:
        slot = _open_envs.get(path)
        if slot is None:
            slot = _open_envs[path] = [Index(path, readonly), 0]
        slot[1] += 1
        return slot[0]


def _release_index(path: str) -> None:
    with _open_envs_lock:
        slot = _open_envs.get(path)
        if slot is not None:
            slot[1] -= 1
            if slot[1] == 0:
                slot[0].close()
                del _open_envs[path]


def _lost(blob_id: bytes) -> IntegrityError:
    return IntegrityError(f"blob {blob_id.hex()} was lost: {LOST_WHY}; "
                          f"a backup of the unchanged file stores it again")


def _verified(data, entry, blob_id: bytes):
    """data, once its BLAKE3 is the blob's id."""
    if hash_bytes(data) != blob_id:
        raise IntegrityError(f"blob {blob_id.hex()} in pack {entry.pack.hex()} fails its hash")
    return data


class Repository:
    """An open repository.  Reading needs no lock; writing goes through a WriteSession."""

    def __init__(self, location: str, wrap_storage=None, storage_options=None, sync_index: bool = True,
                 index_dir: str = index_dirs.INDEX):
        """location: a local path or a URL (storage.open).  wrap_storage: a function
        applied to the storage (features such as fault injection are wrappers around
        a storage; tests use it).  storage_options: for fsspec.filesystem().
        sync_index: bring the index up to date with the store when it is first used (a
        remote repository's cache), or at once if a local index is absent (False:
        rebuild-index does that itself).  index_dir: the local index's directory in the
        repository (a rebuild fills a new one beside index/: index_dirs)."""
        self.remote = is_url(location)
        # what says where a remote repository is (its endpoint): ops compare it with URLs
        self.storage_options: dict = {}
        if self.remote:
            self.path = location.rstrip("/")
            self.storage_options = parse_options() if storage_options is None else dict(storage_options)
            self.storage = open_remote(location, self.storage_options)
        else:
            self.path = local_path(location)
            if not os.path.isdir(self.path):
                raise NotARepository(f"no repository at {self.path} (run 'chunkrepo init' first)")
            self.storage = LocalStorage(self.path)
        if wrap_storage is not None:
            self.storage = wrap_storage(self.storage)
        try:
            raw = self.storage.get(CONFIG_NAME)
        except NotFound:
            raise NotARepository(f"{self.path} is not a chunkrepo repository (no config)") from None
        self.config = Config.decode(raw, self.path)
        self.cache = IndexCache(self.storage, self.config.repo_id) if self.remote else None
        self._index_path = self.cache.index_path if self.remote else os.path.join(self.path, index_dir)
        if not self.remote and index_dir == index_dirs.INDEX:
            try:
                self._rebuild_absent_index(sync_index, wrap_storage)
            except BaseException:
                self.storage.close()
                raise
        self._index = self._open_index()
        self._closed = False
        self.session_lock = None      # the lock of this process's write session, while one runs
        if self.cache is not None:
            self.cache.due = sync_index

    def _rebuild_absent_index(self, sync_index: bool, wrap_storage) -> None:
        """A local index that is absent while the store holds packs or backup records (deleted,
        or lost with a disk) is rebuilt before anything reads it, as a writer's recovery
        would: an empty one would show an empty repository.  One stat on a healthy open;
        the store is listed only when the index is absent.  It is built beside (index_dirs),
        so a kill leaves no partial index/ for the next open to take as the whole."""
        if index_dirs.present(self.path):
            return
        index_dirs.finish_switch(self.path)     # a rebuild killed while it switched
        if (not sync_index or index_dirs.present(self.path)
                or not any(True for prefix in ("backups", "packs") for _ in self.storage.list(prefix))):
            return
        log.warning("chunkrepo: %s: the index is missing: rebuilding it from the store", self.path)
        reason = read_only_reason(self._index_path)
        if reason:
            raise read_only_error(self.path, reason)
        # RepoLocked: another writer holds the lock; it rebuilt the index when it opened
        with WriterLock(os.path.join(self.path, "lock")) as held:
            if index_dirs.present(self.path):
                return          # rebuilt meanwhile
            index_dirs.remove_leftovers(self.path)

            def fill(name: str) -> dict:
                with Repository(self.path, wrap_storage, sync_index=False, index_dir=name) as repo:
                    return repo.recover_store(held)
            _, ready = index_dirs.build(self.path, fill)
            index_dirs.switch(self.path, ready)

    def _open_index(self) -> Index:
        """A local repository this process cannot write is read without the index's lock
        file, while no writer runs (docs/design.md, "Read-only repositories"); a remote
        repository's index is its cache (index_cache)."""
        self.read_only = None if self.remote else read_only_reason(self._index_path)
        self._reader_lock = ReaderLock(os.path.join(self.path, "lock")) if self.read_only else None
        try:
            if self.cache is not None:
                return self.cache.open_index(_acquire_index)
            return _acquire_index(self._index_path, readonly=self.read_only is not None)
        except BaseException:
            self._release_reader_lock()
            raise

    @property
    def index(self) -> Index:
        """The index; a remote repository's cache is brought up to date on first use
        (a writer's lock does that under the lease, so a writer reads `generation` once)."""
        if self.cache is not None and self.cache.due:
            self.cache.sync(self)
        return self._index

    @classmethod
    def init(cls, location: str, config: Optional[Config] = None, storage_options=None) -> "Repository":
        if is_url(location):
            storage = open_remote(location, storage_options)
            if storage.exists(CONFIG_NAME):
                raise ChunkrepoError(f"{location} already holds a chunkrepo repository")
            if next(iter(storage.list("")), None) is not None:
                raise NotARepository(f"{location} is not empty; not creating a repository there")
            storage.ensure_root()
            storage.put(CONFIG_NAME, (config or Config()).encode())
            return cls(location, storage_options=storage_options)
        path = local_path(location)
        if os.path.exists(os.path.join(path, CONFIG_NAME)):
            raise ChunkrepoError(f"{path} already holds a chunkrepo repository")
        if os.path.isdir(path) and os.listdir(path):
            raise NotARepository(f"{path} exists and is not empty; not creating a repository there")
        os.makedirs(path, exist_ok=True)
        storage = LocalStorage(path)
        for d in ("packs", "backups", "index"):
            os.makedirs(os.path.join(path, d), exist_ok=True)
        storage.put(CONFIG_NAME, (config or Config()).encode())
        return cls(path)

    def writer_lock(self):
        """The lock a write session holds: flock on a local repository, a lease in an object store."""
        if self.read_only:
            raise read_only_error(self.path, self.read_only)
        if self.remote:
            return RemoteWriterLock(self)
        return WriterLock(os.path.join(self.path, "lock"))

    def active_writer(self) -> Optional[str]:
        """Who holds the writer lock, if a writer seems to run now (asked without taking
        any lock): the live process REPO/lock names, or the unexpired lock object."""
        if self.remote:
            return live_lock(self.storage)
        return live_holder(os.path.join(self.path, "lock"))

    def check_lock(self) -> None:
        """Inside a write session, before deleting what another writer could need: LockLost
        if the session's lock is no longer its own (a lease taken over, REPO/lock replaced)."""
        if self.session_lock is not None:
            self.session_lock.check()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.storage.close()
            _release_index(self._index_path)
            self._release_reader_lock()

    def _release_reader_lock(self) -> None:
        if self._reader_lock is not None:
            self._reader_lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- blobs --------------------------------------------------------------
    @property
    def read_plan(self) -> ReadPlan:
        """How to read chunks ahead (ops.prefetch, read_blobs): on an object store a request
        costs milliseconds, so batches are bigger, more threads wait on them, and a ranged
        read of neighbouring blobs may carry the bytes of a few others along."""
        return _REMOTE_PLAN if self.remote else _LOCAL_PLAN

    @property
    def upload_threads(self) -> int:
        """Threads uploading sealed packs while the writers fill the next ones (0: none,
        the thread that filled a pack writes it: a local disk gains nothing from more)."""
        return 2 if self.remote else 0

    def read_blob(self, entry, blob_id: bytes) -> bytes:
        """Read, decompress and verify one blob given its index entry."""
        if entry.lost:
            raise _lost(blob_id)
        return self._decode_blob(self.storage.get(pack_name(entry.pack), entry.offset, entry.length),
                                 entry, blob_id)

    @staticmethod
    def _decode_blob(blob, entry, blob_id: bytes) -> bytes:
        return _verified(compression.decompress(blob, entry.raw_length), entry, blob_id)

    def read_blobs(self, items) -> list:
        """Read many blobs given [(blob id, index entry or None)], in order.

        Blobs lying next to each other in one pack (the chunks of consecutive
        small files, as a backup wrote them) are fetched with one ranged read (on
        an object store also across gaps up to read_plan.max_gap); when that read
        fails, each of its blobs is read alone (_stored_blobs).
        Returns, per item, its bytes or the exception reading it raised (so a
        consumer meets an error at the blob it concerns, not earlier).
        """
        out: list = [None] * len(items)
        for k, stored in self._stored_blobs(items, self._ranged_reads(items), self._get_range):
            cid, ek = items[k]
            try:
                out[k] = stored if isinstance(stored, BaseException) else self._decode_blob(stored, ek, cid)
            except ChunkrepoError as exc:
                out[k] = exc
        return out

    def _get_range(self, pack: bytes, offset: int, length: int, at: int) -> memoryview:
        return memoryview(self.storage.get(pack_name(pack), offset, length))

    @staticmethod
    def _stored_blobs(items, reads, read):
        """(k, the stored bytes of items[k] or the exception that kept them) for every
        item the reads serve (_ranged_reads).

        read(pack, offset, length, at) reads one range of a pack; at is where the
        range lies in the reads' bytes laid end to end (BlobReader reads it there).
        When a read of several blobs fails (a pack cut short, a bad sector), each
        of them is read alone, so every blob that is intact is used and each one
        that is not fails with its own error.  Not when the pack is missing or the
        storage gave up on a transient failure: every blob would fail the same way,
        one request (and its retries) at a time.
        """
        at = 0
        for i, j, e, end in reads:
            if end is None:
                yield i, e
                continue
            try:
                buf = read(e.pack, e.offset, end - e.offset, at)
            except (ChunkrepoError, OSError) as exc:
                if j - i > 1 and not isinstance(exc, NotFound) and not is_transient(exc):
                    yield from Repository._read_alone(items, i, j, e.offset, at, read)
                else:
                    for k in range(i, j):
                        yield k, exc
            else:
                for k in range(i, j):
                    ek = items[k][1]
                    pos = ek.offset - e.offset
                    yield k, buf[pos:pos + ek.length]
            at += end - e.offset

    @staticmethod
    def _read_alone(items, i: int, j: int, start: int, at: int, read):
        """_stored_blobs for items[i:j] (read from start at at), one read per blob."""
        for k in range(i, j):
            ek = items[k][1]
            try:
                yield k, read(ek.pack, ek.offset, ek.length, at + ek.offset - start)
            except (ChunkrepoError, OSError) as exc:
                yield k, exc

    def _ranged_reads(self, items):
        """The reads that serve [(blob id, entry)]: (i, j, e, end) for items[i:j], read
        from e.offset to end of e's pack, and (i, i + 1, exception, None) for an item
        that cannot be read (not in the index, lost)."""
        i, n = 0, len(items)
        max_gap = self.read_plan.max_gap
        while i < n:
            e = items[i][1]
            if e is None or e.lost:
                yield i, i + 1, (IntegrityError(f"chunk {items[i][0].hex()} is not in the index") if e is None
                                 else _lost(items[i][0])), None
                i += 1
                continue
            j, end = i + 1, e.offset + e.length
            while j < n:
                nxt = items[j][1]
                if (nxt is None or nxt.lost or nxt.pack != e.pack or not end <= nxt.offset <= end + max_gap
                        or nxt.offset + nxt.length - e.offset > _COALESCE_LIMIT):
                    break
                end = nxt.offset + nxt.length
                j += 1
            yield i, j, e, end
            i = j

    def blob_reader(self) -> "BlobReader":
        """A reader of runs of blobs into buffers it reuses (one per thread)."""
        return BlobReader(self)

    def read_chunk(self, cid: bytes, view=None) -> bytes:
        if view is None:
            # read inside the snapshot: prune deletes a pack only once no reader
            # older than the transaction that dropped it is active
            with self.index.read() as v:
                return self.read_chunk(cid, v)
        e = view.chunk(cid)
        if e is None:
            raise IntegrityError(f"chunk {cid.hex()} is not in the index")
        return self.read_blob(e, cid)

    def read_tree(self, tid: bytes, view=None) -> Tree:
        data = self.tree_bytes(tid, view)
        try:
            return Tree.decode(data)
        except Exception:      # the decoder's own failure on garbage
            if hash_bytes(data) != tid:     # a pack's copy is verified when read: the index's copy
                raise self._index.found_damage(f"its copy of directory record {tid.hex()} fails "
                                               f"its hash") from None
            raise

    def tree_bytes(self, tid: bytes, view=None) -> bytes:
        def lookup(v):
            return v.tree_data(tid), v.tree(tid)
        if view is None:
            with self.index.read() as v:
                data, entry = lookup(v)
        else:
            data, entry = lookup(view)
        if data is None:
            if entry is None:
                raise IntegrityError(f"directory record {tid.hex()} is not in the index")
            data = self.read_blob(entry, tid)
        return data

    # -- backups ------------------------------------------------------------
    def list_backups(self) -> List[BackupRecord]:
        with self.index.read() as v:
            recs = [self._indexed_backup(bid, raw) for bid, raw in v.backups()]
        recs.sort(key=lambda r: (r.start_ns, r.id))
        return recs

    def _indexed_backup(self, bid: str, raw: bytes) -> BackupRecord:
        try:
            return BackupRecord.from_dict(records.decode_json(raw))
        except (ValueError, TypeError):     # it was decoded when it was registered
            raise self._index.found_damage(f"its copy of backup record {bid} is undecodable") from None

    def damaged_backups(self) -> Dict[str, dict]:
        """Backups check --repair marked damaged: id -> {"paths": [...], "paths_count": n}."""
        with self.index.read() as v:
            return {bid: records.decode_json(raw) for bid, raw in v.damaged()}

    def resolve_backup(self, ref: str) -> BackupRecord:
        """A full id, a unique prefix, or 'latest': the newest backup (a data snapshot,
        kind "snapshot", is named by its id only: it is not a backup of a host)."""
        recs = self.list_backups()
        if ref == "latest":
            backups = [r for r in recs if r.kind == "backup"]
            if not backups:
                raise NotFound("the repository has no backups yet")
            return backups[-1]
        matches = [r for r in recs if r.id.startswith(ref.lower())] if ref else []
        if not matches:
            raise NotFound(f"no backup with id {ref!r}")
        if len(matches) > 1:
            raise AmbiguousId(f"backup id prefix {ref!r} matches {len(matches)} backups; give more digits")
        return matches[0]

    def write_session(self, fallback=None, lock=None):
        """The writer's context: takes the lock, adopts leftovers, commits on exit
        (fallback, lock: see WriteSession; a rebuild's old index, and its lock)."""
        return WriteSession(self, fallback, lock)

    def recover_store(self, lock, fallback=None) -> dict:
        """Adopt everything the index lacks (into an empty one: all of the store) under
        the writer lock the caller holds; what WriteSession.recover found."""
        with self.write_session(fallback, lock) as session:
            return session.recovered

    def remove_index_leftovers(self) -> None:
        """In a write session: what killed rebuilds left beside a local index (index_dirs)."""
        if not self.remote:
            index_dirs.remove_leftovers(self.path, keep=self._index_path)


class BlobReader:
    """Repository.read_blobs into buffers this reader reuses, for one thread that is
    done with the blobs of one fetch() before its next.

    fetch() reads the packed bytes of a call into one buffer (on a local
    repository with preadv, no new object); decode() decodes one blob when it is
    wanted, a zstd frame into another buffer (or into the caller's: restore
    decodes a big file's chunks straight into its O_DIRECT buffer), a raw blob
    as a view of the first.  No memory is allocated per blob or per call once
    the buffers have grown to a call's size.  Fresh memory is what costs here:
    the kernel zeroes and faults in every new page (in this VM ~2 us per 4 KiB,
    more than decoding it), and glibc hands freed multi-megabyte buffers back
    (docs/design.md, "Restore")."""

    __slots__ = ("_repo", "_readinto", "_packed", "_decoded", "_blobs")

    def __init__(self, repo: Repository):
        self._repo = repo
        storage = repo.storage
        self._readinto = storage.readinto if isinstance(storage, LocalStorage) else None
        self._packed = bytearray()
        self._decoded = bytearray()
        self._blobs: list = []     # per item of the last fetch: (stored view, entry, id, room) or the exception

    def fetch(self, items) -> None:
        """Read the stored bytes of [(blob id, entry or None)] (what Repository.read_blobs
        would read), for decode().  What an earlier decode returned is no longer valid."""
        repo = self._repo
        reads = list(repo._ranged_reads(items))
        packed = self._buffer("_packed", sum(end - e.offset for _, _, e, end in reads if end is not None))
        decoded = self._buffer("_decoded", sum(e.raw_length for _, e in items if e is not None))
        blobs: list = [None] * len(items)

        def read_into_packed(pack, offset, length, at):    # ranges laid end to end in the reused buffer
            buf = packed[at:at + length]
            self._readinto(pack_name(pack), offset, buf)
            return buf
        read = repo._get_range if self._readinto is None else read_into_packed
        d = 0
        for k, stored in repo._stored_blobs(items, reads, read):
            if isinstance(stored, BaseException):
                blobs[k] = stored
                continue
            cid, ek = items[k]
            blobs[k] = (stored, ek, cid, decoded[d:d + ek.raw_length])
            d += ek.raw_length
        self._blobs = blobs

    def decode(self, k: int, out=None) -> memoryview:
        """Blob k of the last fetch, decoded and verified (valid until the next fetch);
        raises what reading or decoding it raised.  out: a writable buffer of the
        blob's raw size or more to decode a zstd frame into (a raw blob is returned
        as a view of what was read, not copied into out)."""
        blob = self._blobs[k]
        if isinstance(blob, BaseException):
            raise blob
        stored, entry, cid, room = blob
        return _verified(compression.decompress_view(stored, entry.raw_length, room if out is None else out),
                         entry, cid)

    def _buffer(self, attr: str, size: int) -> memoryview:
        """A view of the buffer attr, grown (as a new object: views of the old one may
        still exist) to size bytes or more."""
        buf = getattr(self, attr)
        if len(buf) < size:
            buf = bytearray(max(size, len(buf) + (len(buf) >> 1)))
            setattr(self, attr, buf)
        return memoryview(buf)
