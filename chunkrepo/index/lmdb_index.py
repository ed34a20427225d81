"""LMDB environment and typed views over its databases."""

import os
import struct
import sys
from contextlib import contextmanager
from typing import Iterator, NamedTuple, Optional

import lmdb
import msgpack

from ..codec.hashing import ID_SIZE
from ..errors import IndexDamaged, IntegrityError, StorageError
from .resident import MappedPages, maps_of

_ENTRY = struct.Struct("<16sQIIQ")  # pack id, offset, stored length, raw length, refcount
# sparse without writemap: costs nothing until used; never changed while an
# environment is open, so its map stays where it is (index/resident.py relies on it)
_MAP_SIZE = 1 << 40
_DBS = (b"chunks", b"trees", b"treedata", b"packs", b"backups", b"meta", b"garbage", b"pending", b"digests",
        b"lost", b"damaged")
_NEW_DBS = (b"garbage", b"pending", b"digests", b"lost", b"damaged")   # may be absent in an index opened read-only
_REFCOUNT = struct.Struct("<Q")       # an entry's last field, at _REFCOUNT_AT
_REFCOUNT_AT = _ENTRY.size - _REFCOUNT.size
_LENGTH = struct.Struct("<I")         # an entry's stored length, at _LENGTH_AT
_LENGTH_AT = struct.calcsize("<16sQ")
_GARBAGE = struct.Struct("<BI")       # kind (0 chunk, 1 tree), stored length
_GARBAGE_PER_PAGE = 32                # garbage entries (~60 bytes with their key) in a leaf page, at least
KIND_CHUNK = 0
KIND_TREE = 1
GARBAGE_META = "garbage"              # meta key: the garbage set is maintained in this index
COMMITTING_META = "committing"        # meta key: the pack id whose entries are being committed in steps
REGISTERING_META = "registering"      # meta key: msgpack [backup id, tree ids still to reference, position]
REGISTERING_BATCH_META = "registering-batch"   # meta key: ids of the records whose chunk refs are being added
LOST_PACK = bytes(16)                 # the pack id of a lost blob's entry (check --repair)

# What liblmdb reports when a page it reads fails its checks (wrong type, out of range,
# bad sizes, a database record that is no database, not an LMDB file at all), and
# MDB_BAD_TXN: a transaction in which such an error happened goes on failing with it
# (some lookups that meet damage return "not found" and only mark the transaction).
_DAMAGE = tuple(getattr(lmdb, name) for name in (
    "CorruptedError", "PageNotFoundError", "PanicError", "InvalidError", "IncompatibleError",
    "BadValsizeError", "BadTxnError", "PageFullError", "CursorFullError", "ProblemError", "BadChecksumError")
    if hasattr(lmdb, name))
_REBUILD_ADVICE = "run 'chunkrepo rebuild-index' (it rebuilds it from the packs and backup records)"


class PackInfo(NamedTuple):
    """The `packs` value: msgpack [size, count, dead_bytes, dead_blobs] (missing fields are 0)."""
    size: int
    count: int
    dead_bytes: int = 0
    dead_blobs: int = 0

    def encode(self) -> bytes:
        return msgpack.packb(list(self), use_bin_type=True)

    @classmethod
    def decode(cls, raw) -> "PackInfo":
        v = msgpack.unpackb(bytes(raw), raw=False)
        if not isinstance(v, list) or not 2 <= len(v) <= 4 or not all(isinstance(x, int) for x in v):
            raise ValueError(f"bad pack record {v!r}")
        return cls(*v)


class GarbageEntry(NamedTuple):
    pack: bytes
    id: bytes
    kind: int
    length: int


class BlobEntry(NamedTuple):
    pack: bytes
    offset: int
    length: int
    raw_length: int
    refcount: int

    @property
    def lost(self) -> bool:
        """Its stored copy was lost (check --repair): readers and dedup treat it as absent."""
        return self.pack == LOST_PACK

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
        self._ix.resident.looked_up()
        v = self.txn.get(cid, db=self._ix.chunks)
        return BlobEntry.unpack(v) if v is not None else None

    def has_chunk(self, cid: bytes) -> bool:
        """The chunk is stored (a lost chunk is not: a backup must store it again)."""
        self._ix.resident.looked_up()
        return _present(self.txn.get(cid, db=self._ix.chunks))

    def has_tree(self, tid: bytes) -> bool:
        self._ix.resident.looked_up()
        return _present(self.txn.get(tid, db=self._ix.trees))

    def tree(self, tid: bytes) -> Optional[BlobEntry]:
        self._ix.resident.looked_up()
        v = self.txn.get(tid, db=self._ix.trees)
        return BlobEntry.unpack(v) if v is not None else None

    def tree_data(self, tid: bytes) -> Optional[bytes]:
        self._ix.resident.streamed(4)      # a record spans a few pages
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
            streamed = self._ix.resident.streamed
            for k, v in cur:
                streamed()
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

    def pack_info(self, pid: bytes) -> Optional[PackInfo]:
        v = self.txn.get(pid, db=self._ix.packs)
        return PackInfo.decode(v) if v is not None else None

    def blob(self, kind: int, bid: bytes) -> Optional[BlobEntry]:
        return self.chunk(bid) if kind == KIND_CHUNK else self.tree(bid)

    # -- the garbage set: stored blobs nothing references, keyed pack id + blob id --
    def garbage(self, start: bytes = b"") -> Iterator[GarbageEntry]:
        """Garbage entries in key order (so grouped by pack), from start on."""
        if self._ix.garbage is None:
            return
        with self.txn.cursor(db=self._ix.garbage) as cur:
            found = cur.set_range(start) if start else cur.first()
            if not found:
                return
            for k, v in cur:
                k = bytes(k)
                kind, length = _GARBAGE.unpack(v)
                yield GarbageEntry(k[:16], k[16:], kind, length)

    def garbage_of_pack(self, pid: bytes) -> Iterator[GarbageEntry]:
        for g in self.garbage(pid):
            if g.pack != pid:
                return
            yield g

    def is_garbage(self, pid: bytes, bid: bytes) -> bool:
        return self._ix.garbage is not None and self.txn.get(pid + bid, db=self._ix.garbage) is not None

    def garbage_count(self) -> int:
        if self._ix.garbage is None:
            return 0
        return self.txn.stat(self._ix.garbage)["entries"]

    # -- packs waiting for their readers to move on before the file is deleted --
    def pending(self) -> Iterator[tuple]:
        """(pack id, txn id that dropped it, size) of packs to delete."""
        if self._ix.pending is None:
            return
        with self.txn.cursor(db=self._ix.pending) as cur:
            for k, v in cur:
                txnid, size = msgpack.unpackb(bytes(v))
                yield bytes(k), txnid, size

    def is_pending(self, pid: bytes) -> bool:
        return self._ix.pending is not None and self.txn.get(pid, db=self._ix.pending) is not None

    def blob_count(self) -> int:
        """Entries of chunks and directory records (stored ones and lost ones)."""
        return self.txn.stat(self._ix.chunks)["entries"] + self.txn.stat(self._ix.trees)["entries"]

    # -- lost blobs and the backups they damaged (check --repair) --
    def lost_count(self) -> int:
        """How many lost blobs backups still reference."""
        return 0 if self._ix.lost is None else self.txn.stat(self._ix.lost)["entries"]

    def damaged(self) -> Iterator[tuple]:
        """(backup id, JSON {"paths": [...], "paths_count": n}) of backups marked damaged."""
        if self._ix.damaged is None:
            return
        with self.txn.cursor(db=self._ix.damaged) as cur:
            for k, v in cur:
                yield bytes(k).decode(), bytes(v)

    # -- snapshots: content digest -> where it is stored (rebuildable from the snapshot records) --
    def digest(self, key: bytes) -> Optional[bytes]:
        if self._ix.digests is None:
            return None
        v = self.txn.get(key, db=self._ix.digests)
        return bytes(v) if v is not None else None


class WriteView(ReadView):
    """Updates inside one LMDB write transaction; all or nothing.

    The garbage set and the per-pack dead accounting follow every change of a
    blob's entry or refcount made through this view: a blob whose refcount is
    0 is in `garbage` under (its pack, its id) and counts as dead in its pack's
    record; a blob going 0 -> 1 leaves both.  Pack records are updated once,
    when the transaction ends (Index.write).
    """

    def __init__(self, index, txn):
        super().__init__(index, txn)
        self._dead: dict = {}    # pack id -> [dead bytes delta, dead blobs delta]
        self._found = 0          # lost blobs stored again or no longer referenced in this txn

    def tree_data(self, tid: bytes) -> Optional[bytes]:
        """A record read among point updates (registering a backup, forgetting one): its
        pages count against the writer's lookup budget, not the 8 MiB of streamed reads."""
        self._ix.resident.looked_up()
        v = self.txn.get(tid, db=self._ix.treedata)
        return bytes(v) if v is not None else None

    def _mark_dead(self, kind: int, pid: bytes, bid: bytes, length: int) -> None:
        if self.txn.put(pid + bid, _GARBAGE.pack(kind, length), db=self._ix.garbage, overwrite=False):
            d = self._dead.setdefault(pid, [0, 0])
            d[0] += length
            d[1] += 1

    def _mark_live(self, pid: bytes, bid: bytes, length: int) -> None:
        if self.txn.delete(pid + bid, db=self._ix.garbage):
            d = self._dead.setdefault(pid, [0, 0])
            d[0] -= length
            d[1] -= 1

    def _put_entry(self, kind: int, db, key: bytes, e: BlobEntry, new: bool = False) -> None:
        self._ix.resident.looked_up()      # a put walks the B-tree through the map as a get does
        old = None if new else self.txn.get(key, db=db)
        if old is not None:
            o = BlobEntry.unpack(old)
            if o.lost:
                self._unlose(key)
            elif o.refcount == 0:
                self._mark_live(o.pack, key, o.length)
        if e.lost and e.refcount == 0:
            self._forget_lost(db, key)    # nothing needs it: no entry at all
            return
        self.txn.put(key, e.pack_value(), db=db)
        if e.lost:
            self.txn.put(key, bytes([kind]), db=self._ix.lost)
        elif e.refcount == 0:
            self._mark_dead(kind, e.pack, key, e.length)

    def _unlose(self, key: bytes) -> None:
        if self.txn.delete(key, db=self._ix.lost):
            self._found += 1

    def _forget_lost(self, db, key: bytes) -> None:
        self.txn.delete(key, db=db)
        if db == self._ix.trees:
            self.txn.delete(key, db=self._ix.treedata)
        self._unlose(key)

    def mark_lost(self, kind: int, bid: bytes) -> None:
        """The blob's stored copy is gone: keep its refcount, point it nowhere (LOST_PACK).

        A lost blob is absent for has_chunk/has_tree, so the next backup of an
        unchanged file reads and stores it again (put_chunk then replaces the
        entry, keeping the count); decref to 0 removes it.  A blob nothing
        references is simply dropped."""
        db = self._ix.chunks if kind == KIND_CHUNK else self._ix.trees
        e = BlobEntry.unpack(self.txn.get(bid, db=db))
        if e.refcount == 0:
            self.drop_blob(kind, bid)
            return
        self._put_entry(kind, db, bid, BlobEntry(LOST_PACK, 0, 0, e.raw_length, e.refcount))
        if kind == KIND_TREE:
            self.txn.delete(bid, db=self._ix.treedata)   # lost means no good copy anywhere

    def put_chunk(self, cid: bytes, e: BlobEntry, new: bool = False) -> None:
        """Set a chunk's entry (new=True: the caller knows it has none yet)."""
        self._put_entry(KIND_CHUNK, self._ix.chunks, cid, e, new)

    def put_new_blobs(self, pid: bytes, blobs, tree_bytes: dict) -> None:
        """Index blobs of pack pid that have no entry (a write session's own new pack):
        refcount 0, so each joins the garbage set.  blobs: (kind, id, offset, stored
        length, raw length) each, as a pack's trailer lists them; tree_bytes: a
        record's bytes by id.  put_chunk/put_tree(new=True) blob by blob, without
        their per-blob objects (a first backup indexes every chunk it stores)."""
        ix, put, entry, garbage = self._ix, self.txn.put, _ENTRY.pack, _GARBAGE.pack
        looked_up = ix.resident.looked_up
        dead_bytes = dead_blobs = 0
        for kind, bid, offset, length, raw_length in blobs:
            looked_up()      # a put walks the B-tree through the map as a get does
            if kind == KIND_CHUNK:
                put(bid, entry(pid, offset, length, raw_length, 0), db=ix.chunks)
            else:
                put(bid, entry(pid, offset, length, raw_length, 0), db=ix.trees)
                put(bid, tree_bytes[bid], db=ix.treedata)
            if put(pid + bid, garbage(kind, length), db=ix.garbage, overwrite=False):
                dead_bytes += length
                dead_blobs += 1
        if dead_blobs:
            d = self._dead.setdefault(pid, [0, 0])
            d[0] += dead_bytes
            d[1] += dead_blobs

    def put_tree(self, tid: bytes, e: BlobEntry, data: Optional[bytes] = None, new: bool = False) -> None:
        self._put_entry(KIND_TREE, self._ix.trees, tid, e, new)
        if data is not None:
            self.txn.put(tid, data, db=self._ix.treedata)

    def add_dead_copy(self, kind: int, pid: bytes, bid: bytes, length: int) -> None:
        """A blob stored in pack pid that the index does not point to (a duplicate)."""
        self._mark_dead(kind, pid, bid, length)

    def drop_blob(self, kind: int, bid: bytes) -> Optional[BlobEntry]:
        """Remove a blob from the index (prune); returns the entry it had."""
        db = self._ix.chunks if kind == KIND_CHUNK else self._ix.trees
        old = self.txn.get(bid, db=db)
        if old is None:
            return None
        e = BlobEntry.unpack(old)
        if e.refcount != 0:
            raise IntegrityError(f"refusing to drop blob {bid.hex()}: reference count {e.refcount}")
        self.txn.delete(bid, db=db)
        if kind == KIND_TREE:
            self.txn.delete(bid, db=self._ix.treedata)
        self._mark_live(e.pack, bid, e.length)
        return e

    def drop_pack_garbage(self, pid: bytes) -> int:
        """Drop every garbage blob of pack pid (indexed there with count 0, or a
        duplicate copy) from the index and the garbage set; returns how many were indexed."""
        n = 0
        for g in list(self.garbage_of_pack(pid)):
            e = self.blob(g.kind, g.id)
            if e is not None and e.pack == pid:
                self.drop_blob(g.kind, g.id)      # raises if it is referenced: the txn is aborted
                n += 1
            else:
                self.drop_garbage(pid, g.id)      # a duplicate copy the index never pointed to
        return n

    def drop_garbage(self, pid: bytes, bid: bytes) -> bool:
        return self.txn.delete(pid + bid, db=self._ix.garbage)

    def put_pack(self, pid: bytes, info) -> None:
        if isinstance(info, PackInfo):
            info = info.encode()
        self.txn.put(pid, info, db=self._ix.packs)

    def put_pack_recounted(self, pid: bytes, size: int, count: int) -> None:
        """Record pack pid with its dead accounting summed from its garbage range (one
        contiguous range), whatever earlier transactions put there."""
        dead_bytes = dead_blobs = 0
        looked_up = self._ix.resident.looked_up
        with self.txn.cursor(db=self._ix.garbage) as cur:
            if cur.set_range(pid):
                for k, v in cur:
                    if k[:16] != pid:
                        break
                    if not dead_blobs % _GARBAGE_PER_PAGE:
                        # the range's pages were written by earlier steps, each somewhere else:
                        # each one faults (and maps its neighbours) like a lookup
                        looked_up()
                    dead_bytes += _GARBAGE.unpack(v)[1]
                    dead_blobs += 1
        self._dead.pop(pid, None)     # counted above
        self.put_pack(pid, PackInfo(size, count, dead_bytes, dead_blobs))

    def delete_pack(self, pid: bytes) -> None:
        self.txn.delete(pid, db=self._ix.packs)
        self._dead.pop(pid, None)

    def put_pending(self, pid: bytes, size: int) -> None:
        """Schedule pack pid's file for deletion once no reader older than this txn remains."""
        self.txn.put(pid, msgpack.packb([self.txn.id(), size]), db=self._ix.pending)

    def delete_pending(self, pid: bytes) -> None:
        self.txn.delete(pid, db=self._ix.pending)

    def put_backup(self, bid: str, record: bytes) -> None:
        self.txn.put(bid.encode(), record, db=self._ix.backups)

    def delete_backup(self, bid: str) -> None:
        self.txn.delete(bid.encode(), db=self._ix.backups)
        self.txn.delete(bid.encode(), db=self._ix.damaged)

    def set_damaged(self, marks: dict) -> None:
        """Replace the damaged marks: backup id -> JSON bytes."""
        self.txn.drop(self._ix.damaged, delete=False)
        for bid, value in marks.items():
            self.txn.put(bid.encode(), value, db=self._ix.damaged)

    def put_digest(self, key: bytes, value: bytes) -> None:
        self.txn.put(key, value, db=self._ix.digests)

    def put_meta(self, key: str, value: bytes) -> None:
        self.txn.put(key.encode(), value, db=self._ix.meta)

    def delete_meta(self, key: str) -> None:
        self.txn.delete(key.encode(), db=self._ix.meta)

    def _add_ref(self, db, key: bytes, delta: int) -> Optional[int]:
        self._ix.resident.looked_up()
        v = self.txn.get(key, db=db)
        if v is not None and v[:16] != LOST_PACK:
            # the common case (a registration's millions of references) on the entry's bytes:
            # only its refcount changes, and a count leaving 0 takes the blob out of the garbage
            before = _REFCOUNT.unpack_from(v, _REFCOUNT_AT)[0]
            if before + delta > 0:
                self.txn.put(key, v[:_REFCOUNT_AT] + _REFCOUNT.pack(before + delta), db=db)
                if before == 0:
                    self._mark_live(v[:16], key, _LENGTH.unpack_from(v, _LENGTH_AT)[0])
                return before
        if v is None:
            if delta > 0:
                # named by a record but not stored (a backup registered from its record,
                # or a lost record stored again before its children): lost until stored
                self._put_entry(KIND_CHUNK if db == self._ix.chunks else KIND_TREE, db, key,
                                BlobEntry(LOST_PACK, 0, 0, 0, delta), new=True)
                return None
            raise IntegrityError(f"reference to unknown blob {key.hex()}")
        e = BlobEntry.unpack(v)
        rc = e.refcount + delta
        if rc < 0:
            raise IntegrityError(f"reference count of {key.hex()} would go negative")
        if e.lost and rc == 0:
            self._forget_lost(db, key)    # the last backup needing a lost blob is gone
            return None
        self.txn.put(key, e._replace(refcount=rc).pack_value(), db=db)
        if e.lost:
            return None
        if e.refcount == 0 and rc > 0:
            self._mark_live(e.pack, key, e.length)
        elif rc == 0 and e.refcount > 0:
            self._mark_dead(KIND_CHUNK if db == self._ix.chunks else KIND_TREE, e.pack, key, e.length)
        return e.refcount

    def add_chunk_ref(self, cid: bytes, delta: int = 1) -> Optional[int]:
        """Change a chunk's refcount; return the count before, or None for a lost
        chunk (one that is not stored; adding a reference to an unknown chunk makes it lost)."""
        return self._add_ref(self._ix.chunks, cid, delta)

    def add_chunk_refs(self, ids: list, start: int, end: int) -> None:
        """One reference per id of ids[start:end], sorted: equal ids are adjacent and
        added at once (add_chunk_ref's fast path rewrites a stored chunk's count in place)."""
        db, i = self._ix.chunks, start
        while i < end:
            cid = ids[i]
            j = i + 1
            while j < end and ids[j] == cid:
                j += 1
            self._add_ref(db, cid, j - i)
            i = j

    def add_tree_ref(self, tid: bytes, delta: int = 1) -> Optional[int]:
        return self._add_ref(self._ix.trees, tid, delta)

    def set_refcount(self, which: str, key: bytes, rc: int) -> None:
        db = self._ix.chunks if which == "chunk" else self._ix.trees
        e = BlobEntry.unpack(self.txn.get(key, db=db))
        self._put_entry(KIND_CHUNK if which == "chunk" else KIND_TREE, db, key, e._replace(refcount=rc))

    def reset_garbage(self, want: dict) -> None:
        """Replace the garbage set (pack id + blob id -> (kind, length)) and recompute
        every pack's dead accounting from it (check --repair)."""
        self.txn.drop(self._ix.garbage, delete=False)
        dead: dict = {}
        for key, (kind, length) in want.items():
            self.txn.put(key, _GARBAGE.pack(kind, length), db=self._ix.garbage)
            d = dead.setdefault(key[:16], [0, 0])
            d[0] += length
            d[1] += 1
        for pid, raw in list(self.all_packs()):
            p = PackInfo.decode(raw)
            db, dn = dead.get(pid, (0, 0))
            self.put_pack(pid, p._replace(dead_bytes=db, dead_blobs=dn))
        self._dead.clear()

    def init_garbage(self) -> int:
        """Build the garbage set of an index written before it existed (once)."""
        if self.meta(GARBAGE_META) is not None:
            return 0
        n = 0
        for kind, it in ((KIND_CHUNK, self.all_chunks()), (KIND_TREE, self.all_trees())):
            for bid, e in list(it):
                if e.refcount == 0:
                    self._mark_dead(kind, e.pack, bid, e.length)
                    n += 1
        self.put_meta(GARBAGE_META, b"1")
        return n

    def clear(self) -> None:
        """Empty every database (a cached index about to be rebuilt from the store)."""
        for name in _DBS:
            db = getattr(self._ix, name.decode())
            if db is not None:
                self.txn.drop(db, delete=False)
        self._dead.clear()

    def _flush(self) -> None:
        """Apply the dead-accounting deltas to the pack records; once no lost blob is
        left, no backup can be damaged: the marks go."""
        if self._found and self._ix.damaged is not None and self.lost_count() == 0:
            self.txn.drop(self._ix.damaged, delete=False)
        for pid, (db, dn) in self._dead.items():
            if not db and not dn:
                continue
            raw = self.txn.get(pid, db=self._ix.packs)
            if raw is None:
                continue    # dropped in this transaction (prune): nothing left to account
            p = PackInfo.decode(raw)
            self.txn.put(pid, p._replace(dead_bytes=p.dead_bytes + db, dead_blobs=p.dead_blobs + dn).encode(),
                         db=self._ix.packs)
        self._dead.clear()


# The keys of Environment.info(), kept interned for good.  MappedPages calls info() before
# every drop (map_size), and CPython interns the keys of the dict it builds: with no other
# reference, each call added five strings to the interpreter's table of interned strings
# and took them out again, and as the dead entries filled it that table (~1 MiB at this
# size) was reallocated, again and again in a long backup, in the main thread's heap
# (docs/design.md, Memory at scale: what it cost at 1M files).
_INFO_KEYS = tuple(map(sys.intern, ("map_addr", "map_size", "last_pgno", "last_txnid", "max_readers",
                                    "num_readers")))


class Index:
    """One LMDB environment per path per process (as the LMDB authors advise)."""

    def __init__(self, path: str, readonly: bool = False, lock: Optional[bool] = None):
        """readonly: open the index for reading only and without its lock file
        (lock.mdb, where readers register so that a writer keeps the pages they
        read): for an index this process cannot write (read_only_reason()).  The caller
        makes sure that no writer runs meanwhile (repository.lock.ReaderLock)."""
        self.path = path
        self.readonly = readonly
        # lock=True with readonly: a reader beside a writer of another process (its read
        # snapshots registered in lock.mdb, so the writer keeps their pages)
        self.lock = (not readonly) if lock is None else lock
        self._open()

    def _open(self) -> None:
        path, readonly = self.path, self.readonly
        self.damage: Optional[IndexDamaged] = None    # set once damage was met: no more writes
        os.makedirs(path, exist_ok=True) if not readonly else None
        data_file = os.path.join(path, "data.mdb")
        before = maps_of(data_file)
        try:
            # metasync=False (MDB_NOMETASYNC): a commit syncs its pages once and writes the meta
            # page without a second sync; write(durable=True) syncs after the commit (see there)
            self.env = lmdb.open(path, map_size=_MAP_SIZE, max_dbs=len(_DBS) + 2,
                                 readonly=readonly, subdir=True, max_readers=256,
                                 lock=self.lock, readahead=False, meminit=False, metasync=False)
        except _DAMAGE as e:
            raise self.found_damage(e) from None
        except lmdb.Error as e:
            raise StorageError(f"cannot open index {path}: {e}") from None
        try:
            handles = self._open_dbs()
        except BaseException:
            self.env.close()
            raise
        self.chunks = handles[b"chunks"]
        self.trees = handles[b"trees"]
        self.treedata = handles[b"treedata"]
        self.packs = handles[b"packs"]
        self.backups = handles[b"backups"]
        self.meta = handles[b"meta"]
        self.garbage = handles[b"garbage"]
        self.pending = handles[b"pending"]
        self.digests = handles[b"digests"]    # snapshots: BLAKE3 content digest -> where (ops.snapshot)
        self.lost = handles[b"lost"]          # blobs whose stored copy was lost (check --repair)
        self.damaged = handles[b"damaged"]    # backups that lost data
        # the process's resident share of the map, bounded (see index/resident.py)
        self.resident = MappedPages(data_file, before, lambda: self.env.info()["map_size"])

    def _open_dbs(self) -> dict:
        handles = {}
        for name in _DBS:
            try:
                handles[name] = self.env.open_db(name, create=not self.readonly)
            except lmdb.NotFoundError:
                if not self.readonly or name not in _NEW_DBS:
                    raise IntegrityError(f"index {self.path} lacks database {name.decode()}") from None
                handles[name] = None
            except _DAMAGE as e:
                raise self.found_damage(e) from None
        return handles

    def found_damage(self, what) -> IndexDamaged:
        """The error for damage found here (what: liblmdb's error, or a value that is no
        longer what was written); from now on no write transaction starts."""
        self.damage = IndexDamaged(f"the index {self.path} is damaged ({what}): {_REBUILD_ADVICE}")
        return self.damage

    # liblmdb's damage reports become IndexDamaged where the environment is used: opening
    # it (above), read(), write() and has_chunk() (an except clause costs nothing until
    # it catches; these are the hot paths of a backup)
    @contextmanager
    def read(self):
        try:
            with self.env.begin(buffers=False) as txn:
                yield ReadView(self, txn)
        except _DAMAGE as e:
            raise self.found_damage(e) from None

    @contextmanager
    def write(self, durable: bool = True):
        """One write transaction, committed when the block ends.

        The commit is atomic either way (its pages are synced before its meta page
        is written: MDB_NOMETASYNC keeps the database whole through a power cut).
        durable=True also syncs the meta page, so the transaction survives a power
        cut once this returns; durable=False leaves that to the next durable commit:
        a power cut may undo it (never a kill -9), for the intermediate steps of a
        pack commit or a registration, which recovery redoes (docs/format.md, Write
        order).  Refused once damage was met: a writer never goes on in a damaged index."""
        if self.damage is not None:
            raise self.damage
        try:
            with self.env.begin(write=True) as txn:
                view = WriteView(self, txn)
                yield view
                view._flush()
            if durable:
                self.sync()
            self.resident.check(self.resident.lookup_budget)   # what the transaction read stays mapped
        except _DAMAGE as e:
            raise self.found_damage(e) from None
        except lmdb.MapFullError:
            raise StorageError("index map is full") from None
        except lmdb.Error as e:
            if "No space left" in str(e):
                raise StorageError("no space left on device while writing the index") from None
            if _low_space(self.path):
                # LMDB reports a short write at the end of the disk as EIO
                raise StorageError(f"no space left on device while writing the index ({e})") from None
            raise StorageError(f"index write failed: {e}") from None

    def sync(self) -> None:
        """Make every transaction committed so far survive a power cut (one fdatasync)."""
        self.env.sync(True)

    def has_chunk(self, cid: bytes) -> bool:
        """One-shot lookup in a short read transaction (safe from any thread)."""
        self.resident.looked_up()
        try:
            with self.env.begin() as txn:
                return _present(txn.get(cid, db=self.chunks))
        except _DAMAGE as e:
            raise self.found_damage(e) from None

    def oldest_reader(self) -> Optional[int]:
        """The oldest snapshot (txn id) an active read transaction of any process sees.

        Slots of dead processes are cleared first; idle slots show '-'."""
        self.env.reader_check()
        oldest = None
        for line in self.env.readers().splitlines()[1:]:
            parts = line.split()
            if len(parts) == 3 and parts[2].isdigit():
                t = int(parts[2])
                oldest = t if oldest is None else min(oldest, t)
        return oldest

    def recreate(self) -> None:
        """Replace the environment by an empty one, whatever state its file is in (a
        cache about to be refilled from the store).  No transaction may be open."""
        self.close()
        for name in ("data.mdb", "lock.mdb"):
            try:
                os.unlink(os.path.join(self.path, name))
            except FileNotFoundError:
                pass
        self._open()

    def close(self) -> None:
        self.resident.close()
        self.env.close()


def read_only_reason(path: str) -> Optional[str]:
    """Why this process cannot write the index at path (its directory, or the one it
    would be made in, and its files), or None if it can: a read-only file system, or
    no write permission.  Such an index is opened with readonly=True."""
    target = path if os.path.isdir(path) else os.path.dirname(path)
    files = [target] + [f for f in (os.path.join(path, "data.mdb"), os.path.join(path, "lock.mdb"))
                        if os.path.exists(f)]
    effective = os.access in os.supports_effective_ids
    for f in files:
        if not os.access(f, os.W_OK, effective_ids=effective):
            if os.statvfs(f).f_flag & os.ST_RDONLY:
                return f"{f} is on a read-only file system"
            return f"no permission to write {f}"
    return None


def _present(raw) -> bool:
    return raw is not None and raw[:16] != LOST_PACK


def _low_space(path: str, threshold: int = 16 << 20) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < threshold


assert _ENTRY.size == 16 + 8 + 4 + 4 + 8 and ID_SIZE == 32
