"""Repository: opens a repository (a local directory or a URL) and reads blobs, trees and backups."""

import os
import threading
from typing import Dict, List, Optional

from ..codec import compression, records
from ..codec.hashing import hash_bytes
from ..errors import AmbiguousId, ChunkrepoError, IntegrityError, NotARepository, NotFound
from ..index import Index
from ..model import BackupRecord, Tree
from ..storage import LocalStorage
from ..storage.open import is_url, local_path, open_fsspec
from .config import CONFIG_NAME, Config
from .index_cache import IndexCache, RemoteWriterLock
from .lock import WriterLock
from .packs import pack_name
from .session import WriteSession

_open_envs: Dict[str, list] = {}   # LMDB allows one Environment per path per process
_open_envs_lock = threading.Lock()


def _acquire_index(path: str) -> Index:
    with _open_envs_lock:
        slot = _open_envs.get(path)
        if slot is None:
            slot = _open_envs[path] = [Index(path), 0]
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


def _decode(blob: bytes, entry, blob_id: bytes) -> bytes:
    data = compression.decompress(blob, entry.raw_length)
    if hash_bytes(data) != blob_id:
        raise IntegrityError(f"blob {blob_id.hex()} in pack {entry.pack.hex()} fails its hash")
    return data


class Repository:
    """An open repository.  Reading needs no lock; writing goes through a WriteSession."""

    def __init__(self, location: str, wrap_storage=None, storage_options=None, sync_index: bool = True):
        """location: a local path or a URL (storage.open).  wrap_storage: a function
        applied to the storage (features such as fault injection are wrappers around
        a storage; tests use it).  storage_options: for fsspec.filesystem()."""
        self.remote = is_url(location)
        if self.remote:
            self.path = location.rstrip("/")
            self.storage = open_fsspec(location, storage_options)
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
        self._index_path = self.cache.index_path if self.remote else os.path.join(self.path, "index")
        self.index = _acquire_index(self._index_path)
        self._closed = False
        if self.cache is not None and sync_index:
            try:
                self.cache.sync(self)
            except BaseException:
                self.close()
                raise

    @classmethod
    def init(cls, location: str, config: Optional[Config] = None, storage_options=None) -> "Repository":
        if is_url(location):
            storage = open_fsspec(location, storage_options)
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
        if self.remote:
            return RemoteWriterLock(self)
        return WriterLock(os.path.join(self.path, "lock"))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.storage.close()
            _release_index(self._index_path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- blobs --------------------------------------------------------------
    @property
    def read_plan(self) -> tuple:
        """(threads, coalesce span) for reading chunks ahead: on an object store a request
        costs milliseconds, so neighbouring blobs of a pack are read with one ranged GET
        of up to `span` bytes (gaps up to _MAX_GAP included) by more threads."""
        return (8, 8 << 20) if self.remote else (2, 0)

    @property
    def upload_threads(self) -> int:
        """Threads uploading sealed packs while the writers fill the next ones (0: none,
        the thread that filled a pack writes it: a local disk gains nothing from more)."""
        return 2 if self.remote else 0

    def read_blob(self, entry, blob_id: bytes) -> bytes:
        """Read, decompress and verify one blob given its index entry."""
        if entry.lost:
            raise IntegrityError(f"blob {blob_id.hex()} was lost with a damaged pack (check --repair); "
                                 f"a backup of the unchanged file stores it again")
        blob = self.storage.get(pack_name(entry.pack), entry.offset, entry.length)
        return _decode(blob, entry, blob_id)

    def read_blobs(self, items) -> list:
        """[(entry, id)] of one pack in ascending offsets -> for each the data or the
        exception reading it, with one ranged read."""
        first, last = items[0][0], items[-1][0]
        try:
            span = self.storage.get(pack_name(first.pack), first.offset, last.offset + last.length - first.offset)
        except Exception as e:
            return [e] * len(items)
        out = []
        for entry, blob_id in items:
            at = entry.offset - first.offset
            try:
                out.append(_decode(span[at:at + entry.length], entry, blob_id))
            except Exception as e:
                out.append(e)
        return out

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
        return Tree.decode(self.tree_bytes(tid, view))

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
            recs = [BackupRecord.from_dict(records.decode_json(raw)) for _, raw in v.backups()]
        recs.sort(key=lambda r: (r.start_ns, r.id))
        return recs

    def damaged_backups(self) -> Dict[str, dict]:
        """Backups check --repair marked damaged: id -> {"paths": [...], "paths_count": n}."""
        with self.index.read() as v:
            return {bid: records.decode_json(raw) for bid, raw in v.damaged()}

    def resolve_backup(self, ref: str) -> BackupRecord:
        """A full id, a unique prefix, or 'latest'."""
        recs = self.list_backups()
        if ref == "latest":
            if not recs:
                raise NotFound("the repository has no backups yet")
            return recs[-1]
        matches = [r for r in recs if r.id.startswith(ref.lower())] if ref else []
        if not matches:
            raise NotFound(f"no backup with id {ref!r}")
        if len(matches) > 1:
            raise AmbiguousId(f"backup id prefix {ref!r} matches {len(matches)} backups; give more digits")
        return matches[0]

    def write_session(self):
        """The writer's context: takes the lock, adopts leftovers, commits on exit."""
        return WriteSession(self)
