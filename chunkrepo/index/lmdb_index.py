"""LMDB environment and typed views over its databases."""

import os
import struct
from contextlib import contextmanager
from typing import Iterator, NamedTuple, Optional

import lmdb

from ..codec.hashing import ID_SIZE
from ..errors import IntegrityError, StorageError

_ENTRY = struct.Struct("<16sQIIQ")  # pack id, offset, stored length, raw length, refcount
_MAP_SIZE = 1 << 40  # sparse without writemap: costs nothing until used
_DBS = (b"chunks", b"trees", b"treedata", b"packs", b"backups", b"meta")


class BlobEntry(NamedTuple):
    pack: bytes
    offset: int
    length: int
    raw_length: int
    refcount: int

    def pack_value(self) -> bytes:
        return _ENTRY.pack(self.pack, self.offset, self.length, self.raw_length, self.refcount)

    @classmethod
    def unpack(cls, v) -> "BlobEntry":
        return cls._make(_ENTRY.unpack(v))


class ReadView:
    """Lookups inside one LMDB read transaction (a consistent snapshot)."""

    def __init__(self, index: "Index", txn):
        self._ix = index
        self.txn = txn

    def chunk(self, cid: bytes) -> Optional[BlobEntry]:
        v = self.txn.get(cid, db=self._ix.chunks)
        return BlobEntry.unpack(v) if v is not None else None

    def has_chunk(self, cid: bytes) -> bool:
        return self.txn.get(cid, db=self._ix.chunks) is not None

    def tree(self, tid: bytes) -> Optional[BlobEntry]:
        v = self.txn.get(tid, db=self._ix.trees)
        return BlobEntry.unpack(v) if v is not None else None

    def tree_data(self, tid: bytes) -> Optional[bytes]:
        v = self.txn.get(tid, db=self._ix.treedata)
        return bytes(v) if v is not None else None

    def has_pack(self, pid: bytes) -> bool:
        return self.txn.get(pid, db=self._ix.packs) is not None

    def backup(self, bid: str) -> Optional[bytes]:
        v = self.txn.get(bid.encode(), db=self._ix.backups)
        return bytes(v) if v is not None else None

    def backups(self) -> Iterator[tuple]:
        with self.txn.cursor(db=self._ix.backups) as cur:
            for k, v in cur:
                yield bytes(k).decode(), bytes(v)

    def _iter(self, db) -> Iterator[tuple]:
        with self.txn.cursor(db=db) as cur:
            for k, v in cur:
                yield bytes(k), BlobEntry.unpack(v)

    def all_chunks(self):
        return self._iter(self._ix.chunks)

    def all_trees(self):
        return self._iter(self._ix.trees)

    def all_packs(self) -> Iterator[tuple]:
        with self.txn.cursor(db=self._ix.packs) as cur:
            for k, v in cur:
                yield bytes(k), bytes(v)

    def meta(self, key: str) -> Optional[bytes]:
        v = self.txn.get(key.encode(), db=self._ix.meta)
        return bytes(v) if v is not None else None


class WriteView(ReadView):
    """Updates inside one LMDB write transaction; all or nothing."""

    def put_chunk(self, cid: bytes, e: BlobEntry) -> None:
        self.txn.put(cid, e.pack_value(), db=self._ix.chunks)

    def put_tree(self, tid: bytes, e: BlobEntry, data: bytes) -> None:
        self.txn.put(tid, e.pack_value(), db=self._ix.trees)
        self.txn.put(tid, data, db=self._ix.treedata)

    def put_pack(self, pid: bytes, info: bytes) -> None:
        self.txn.put(pid, info, db=self._ix.packs)

    def put_backup(self, bid: str, record: bytes) -> None:
        self.txn.put(bid.encode(), record, db=self._ix.backups)

    def delete_backup(self, bid: str) -> None:
        self.txn.delete(bid.encode(), db=self._ix.backups)

    def put_meta(self, key: str, value: bytes) -> None:
        self.txn.put(key.encode(), value, db=self._ix.meta)

    def _add_ref(self, db, key: bytes, delta: int) -> int:
        v = self.txn.get(key, db=db)
        if v is None:
            raise IntegrityError(f"reference to unknown blob {key.hex()}")
        e = BlobEntry.unpack(v)
        rc = e.refcount + delta
        if rc < 0:
            raise IntegrityError(f"reference count of {key.hex()} would go negative")
        self.txn.put(key, e._replace(refcount=rc).pack_value(), db=db)
        return e.refcount

    def add_chunk_ref(self, cid: bytes, delta: int = 1) -> int:
        """Change a chunk's refcount; return the count before."""
        return self._add_ref(self._ix.chunks, cid, delta)

    def add_tree_ref(self, tid: bytes, delta: int = 1) -> int:
        return self._add_ref(self._ix.trees, tid, delta)

    def set_refcount(self, which: str, key: bytes, rc: int) -> None:
        db = self._ix.chunks if which == "chunk" else self._ix.trees
        e = BlobEntry.unpack(self.txn.get(key, db=db))
        self.txn.put(key, e._replace(refcount=rc).pack_value(), db=db)


class Index:
    """One LMDB environment per path per process (as the LMDB authors advise)."""

    def __init__(self, path: str, readonly: bool = False):
        self.path = path
        os.makedirs(path, exist_ok=True) if not readonly else None
        try:
            self.env = lmdb.open(path, map_size=_MAP_SIZE, max_dbs=len(_DBS) + 2,
                                 readonly=readonly, subdir=True, max_readers=256,
                                 lock=True, readahead=False, meminit=False)
        except lmdb.Error as e:
            raise StorageError(f"cannot open index {path}: {e}") from None
        handles = {}
        for name in _DBS:
            if readonly:
                try:
                    handles[name] = self.env.open_db(name, create=False)
                except lmdb.NotFoundError:
                    raise IntegrityError(f"index {path} lacks database {name.decode()}") from None
            else:
                handles[name] = self.env.open_db(name)
        self.chunks = handles[b"chunks"]
        self.trees = handles[b"trees"]
        self.treedata = handles[b"treedata"]
        self.packs = handles[b"packs"]
        self.backups = handles[b"backups"]
        self.meta = handles[b"meta"]

    @contextmanager
    def read(self):
        with self.env.begin(buffers=False) as txn:
            yield ReadView(self, txn)

    @contextmanager
    def write(self):
        try:
            with self.env.begin(write=True) as txn:
                yield WriteView(self, txn)
        except lmdb.MapFullError:
            raise StorageError("index map is full") from None
        except lmdb.Error as e:
            if "No space left" in str(e):
                raise StorageError("no space left on device while writing the index") from None
            if _low_space(self.path):
                # LMDB reports a short write at the end of the disk as EIO
                raise StorageError(f"no space left on device while writing the index ({e})") from None
            raise StorageError(f"index write failed: {e}") from None

    def has_chunk(self, cid: bytes) -> bool:
        """One-shot lookup in a short read transaction (safe from any thread)."""
        with self.env.begin() as txn:
            return txn.get(cid, db=self.chunks) is not None

    def close(self) -> None:
        self.env.close()


def _low_space(path: str, threshold: int = 16 << 20) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < threshold


assert _ENTRY.size == 16 + 8 + 4 + 4 + 8 and ID_SIZE == 32
