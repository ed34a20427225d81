"""WriteSession: the one writer of a repository, holding its lock.

Blobs are claimed (deduplicated against the index and against what this
session already wrote), compressed by the caller's thread and appended to that
thread's own pack.  A sealed pack's entries wait in a queue until the owner
thread calls checkpoint(), which commits them to the index in transactions of at
most STEP entries; a backup is registered in steps likewise (docs/format.md, Write
order: what a kill between two steps leaves, and how recovery finishes it).
Threads of one process take turns: a session waits while another thread's session of the
same repository runs (another process's gets RepoLocked from the writer lock).
"""

import concurrent.futures
import operator
import os
import queue
import threading
from typing import Dict, Optional

from ..codec import compression, records
from ..codec.hashing import hash_bytes
from ..errors import IntegrityError, LockLost, NotFound, StorageError
from ..index import BlobEntry, PackInfo
from ..index.lmdb_index import COMMITTING_META, GARBAGE_META, REGISTERING_BATCH_META, REGISTERING_META
from ..model import BackupRecord, Node, Tree, decode_record
from .crash_points import crash_point
from .new_ids import NewIds
from .shared_claims import SharedClaims
from .packs import (HEADER, KIND_DATA, KIND_TREE, PackEntry, PackWriter, pack_id_from_name, read_trailer,
                    trailer_candidates)


_MAX_PENDING_TREE_BYTES = 1 << 20
_ID = operator.attrgetter("id")
# a pack is sealed at pack_size bytes or at this many blobs: what a session holds per
# open pack (its entries, the claimed chunk ids) stays the same for a million small
# files as for a thousand (8,192: ~4 MiB more peak RSS at 100k files than 2,048)
MAX_PACK_BLOBS = 2048
# index updates per write transaction when a pack is committed or a backup registered:
# LMDB holds a malloc'd copy of every page a transaction changes until it commits, and
# random chunk ids put nearly every update on a page of its own; it keeps those copies
# for reuse as long as the environment is open, so the largest transaction sets the
# process's anonymous memory for good (1,024: ~4 MiB more peak RSS at 100k files)
STEP = 256
# a writer's point lookups and reference updates keep at most this much of the index map
# mapped (readers 8 MiB: tar and restore come back to their lookups' pages); at 8 MiB the
# map added ~4 MiB more to the peak RSS of a first backup of 1M files, at 4 MiB ~2 MiB
# more than at 2 (docs/design.md, Memory at scale: issue 4's ratio)
WRITER_LOOKUP_BUDGET = 2 << 20
# a registration adds a backup's chunk references in id order, this many at a time
# (their ids: ~1.3 MiB of Python objects), in steps that write about STEP_WRITE_TARGET
REGISTER_BATCH = 1 << 14
STEP_WRITE_TARGET = 1 << 20

# One write session per repository per process at a time: a session of another thread of this
# process waits for it (the writer lock, a flock or a lease, refuses a second holder even in
# the same process).  Reentrant: a nested session in the same thread still meets RepoLocked.
_in_process: Dict[str, threading.RLock] = {}
_in_process_lock = threading.Lock()


def _process_writer(repo) -> threading.RLock:
    key = repo.path if repo.remote else os.path.realpath(repo.path)
    with _in_process_lock:
        return _in_process.setdefault(key, threading.RLock())


def level_for(levels: tuple, n: int) -> int:
    """The zstd level of a blob of n bytes (levels: WriteSession.levels)."""
    level, small_level, small_blob = levels
    return small_level if n <= small_blob else level


class WriteSession:
    def __init__(self, repo, fallback=None, lock=None):
        """fallback: where recovery may find what the store lost (rebuild-index passes
        the index it replaces): .pack_entries(pack ids) -> {pack id: [PackEntry]} for
        packs with a damaged trailer, .backup_record(backup id) -> bytes or None for a
        damaged or missing record file, .backup_ids() -> the backups it lists (each
        must have a record file).  Whatever it gives is verified before it is used.
        lock: the writer lock, already held by the caller (a rebuild holds it from
        before the session until its new index is switched in); by default the
        session takes the repository's own."""
        self.repo = repo
        self._fallback = fallback
        self.storage = repo.storage
        self.level = repo.config.compression_level
        # blobs up to the chunker's minimum size (whole small files, file tails, most
        # directory records) two levels lower: zstd's per-frame setup dominates there,
        # and on a host's small files level 1 took 25% less CPU than 3 for 0.7% more
        # bytes (the large chunks, where level 3 saves 5%, keep the configured level)
        self._small_blob = repo.config.chunker.min_size
        self._small_level = max(1, self.level - 2) if self.level > 0 else self.level
        self.pack_size = repo.config.pack_size
        self._own_lock = lock is None
        self._lock = repo.writer_lock() if lock is None else lock
        self._claim_lock = threading.Lock()
        self._pending_chunks: set = set()
        # the blob ids this session indexed, when it began on an index without blobs
        # (then no other id is in the index: a claim needs no lookup; new_ids.py)
        self._new_ids: Optional[NewIds] = None
        self._shared: Optional[SharedClaims] = None    # once reader processes claim too
        self._pending_trees: Dict[bytes, bytes] = {}   # id -> record bytes, until committed
        self._sealed: "queue.SimpleQueue" = queue.SimpleQueue()
        self._local = threading.local()
        self._writers: list = []
        self._writers_lock = threading.Lock()
        self._upload_threads = repo.upload_threads     # 0: a pack is written by the thread that filled it
        self._uploads = None
        self._upload_slots = threading.BoundedSemaphore(self._upload_threads + 1)
        self._upload_futures: list = []
        self.bytes_new = 0        # raw bytes of chunks this session stored
        self.bytes_stored = 0     # compressed bytes written to packs
        self._stats_lock = threading.Lock()    # writer threads add to both (+= is not atomic)
        self._unsynced = False    # index steps committed but not yet durable

    @property
    def index(self):
        # read at use: for a remote repository, taking the lock brings it up to date
        return self.repo.index

    # -- lifecycle ------------------------------------------------------------
    def __enter__(self):
        self._in_process = _process_writer(self.repo)
        self._in_process.acquire()
        if self._own_lock:
            try:
                self._lock.acquire()
            except BaseException:
                self._in_process.release()
                raise
        self.repo.session_lock = self._lock
        self._resident = resident = self.index.resident
        self._reader_budget = resident.lookup_budget
        resident.lookup_budget = min(resident.lookup_budget, WRITER_LOOKUP_BUDGET)
        try:
            self.repo.remove_index_leftovers()
            self.recover()
            with self.index.read() as v:
                self._new_ids = NewIds() if v.blob_count() == 0 else None
        except BaseException:
            resident.lookup_budget = self._reader_budget
            self.repo.session_lock = None
            self._release_lock()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.flush()
            else:
                self._abort_writers()
        finally:
            if self._uploads is not None:
                self._uploads.shutdown(wait=True)
                self._uploads = None
            self._resident.lookup_budget = self._reader_budget
            self.repo.session_lock = None
            if self._shared is not None:
                self._shared.remove()
                self._shared = None
            self._release_lock()

    def _release_lock(self) -> None:
        try:
            if self._own_lock:
                self._lock.release()
        finally:
            self._in_process.release()

    def recover(self) -> dict:
        """Adopt what a killed writer left: sealed packs and stored backup records."""
        self.storage.remove_stale_temporaries("packs")
        self.storage.remove_stale_temporaries("backups")
        with self.index.read() as v:
            has_garbage_set = v.meta(GARBAGE_META) is not None
        if not has_garbage_set:
            with self.index.write() as w:
                w.init_garbage()   # an index written before the garbage set existed
        adopted_packs = 0
        with self.index.read() as v:
            # a pack pending deletion was dropped by prune: its file goes, never comes back
            unknown = [n for n in self.storage.list("packs")
                       if not v.has_pack(pack_id_from_name(n)) and not v.is_pending(pack_id_from_name(n))]
            marked = v.meta(COMMITTING_META)
        # the pack a killed writer was committing in steps first: adopting another one in
        # steps moves the mark, and a pack committed in part must never be left unmarked
        unknown.sort(key=lambda n: pack_id_from_name(n) != marked)
        damaged = []
        for name in unknown:
            try:
                entries = read_trailer(self.storage, name)
            except IntegrityError:
                damaged.append(name)
                continue
            self._commit_pack(pack_id_from_name(name), entries, self.storage.size(name))
            adopted_packs += 1
        salvaged = self._adopt_verified(damaged)
        with self.index.read() as v:
            stale_marker = v.meta(COMMITTING_META) is not None    # its pack is gone: nothing to finish
            journal = v.meta(REGISTERING_META)
        if stale_marker:
            with self.index.write() as w:
                w.delete_meta(COMMITTING_META)
        adopted_backups = 0
        if journal is not None:
            adopted_backups += self._resume_registration(journal)
        stored = list(self.storage.list("backups"))
        with self.index.read() as v:
            missing = [n for n in stored if v.backup(n.rsplit("/", 1)[1]) is None]
        rewritten, unregistered = self._rewrite_missing_records({n.rsplit("/", 1)[1] for n in stored})
        missing += [f"backups/{bid}" for bid in rewritten]
        from_fallback = []
        for name in missing:
            rec, fell_back = self._stored_record(name)
            if fell_back:
                from_fallback.append(rec.id)
            try:
                self._register_backup(rec)
                adopted_backups += 1
            except IntegrityError:
                unregistered.append(rec.id)   # its records are not all in the store
                continue
        self.recovered = {"packs": adopted_packs, "backups": adopted_backups,
                          "damaged_packs": damaged, "salvaged_blobs": salvaged,
                          "unregistered_backups": unregistered, "records_from_index": from_fallback,
                          "records_rewritten": rewritten}
        return self.recovered

    def _rewrite_missing_records(self, stored: set) -> tuple:
        """The backups the fallback lists whose record file is gone (damage: forget removes
        the index's entry before the file): each file is written again from the fallback's
        copy once that verifies, to be registered as stored.  (ids written, ids whose copy
        does not verify: not registered, reported.)"""
        if self._fallback is None:
            return [], []
        written, bad = [], []
        for bid in sorted(set(self._fallback.backup_ids()) - stored):
            copy = self._fallback.backup_record(bid)
            try:
                decode_record(copy or b"", bid)
            except ValueError:
                bad.append(bid)
                continue
            self._lock.check()
            self.storage.put(f"backups/{bid}", copy)
            written.append(bid)
        return written, bad

    def _adopt_verified(self, names: list) -> Dict[str, int]:
        """Adopt the blobs of packs with a damaged trailer that verify (read, decoded,
        hashing to their id): those the damaged trailer still lists, and those the
        fallback knows.  A pack with any is listed, so check reports its trailer and
        check --repair moves its blobs to a sound pack.  {name: blobs adopted}."""
        known = self._fallback.pack_entries([pack_id_from_name(n) for n in names]) \
            if self._fallback is not None and names else {}
        out = {}
        for name in names:
            pid = pack_id_from_name(name)
            try:
                size = self.storage.size(name)
                found = trailer_candidates(self.storage, name)
            except NotFound:
                continue
            candidates = {(e.id, e.offset, e.length): e for e in found + known.get(pid, [])
                          if e.kind in (KIND_DATA, KIND_TREE) and len(e.id) == 32
                          and len(HEADER) <= e.offset and 0 < e.length and e.offset + e.length <= size}
            good: Dict[bytes, PackEntry] = {}
            for batch in _batches(sorted(candidates.values(), key=lambda e: e.offset)):
                batch = [e for e in batch if e.id not in good]
                got = self.repo.read_blobs([(e.id, BlobEntry(pid, e.offset, e.length, e.raw_length, 0))
                                            for e in batch])
                good.update((e.id, e) for e, data in zip(batch, got) if not isinstance(data, BaseException))
            if good:
                self._commit_pack(pid, list(good.values()), size)
            out[name] = len(good)
        return out

    def _stored_record(self, name: str):
        """(the backup record stored as name, whether the fallback's copy replaced a
        damaged file).  A damaged record whose copy is unknown stops the recovery: skipping
        it would leave its data unreferenced, for prune to delete."""
        bid = name.rsplit("/", 1)[1]
        try:
            return decode_record(self.storage.get(name), bid), False
        except ValueError as e:
            why = e
        copy = self._fallback.backup_record(bid) if self._fallback is not None else None
        if copy is not None:
            try:
                return decode_record(copy, bid), True
            except ValueError:
                pass
        raise IntegrityError(f"backup record {name} is damaged ({why}) and no copy of it is known: its "
                             f"backup cannot be registered. Put the file back from a copy, or move it out of "
                             f"backups/ to give that backup up (prune then frees its data)")

    # -- blobs ----------------------------------------------------------------
    def _writer(self) -> PackWriter:
        w = getattr(self._local, "writer", None)
        if w is None:
            w = self._local.writer = PackWriter(self.storage)
            with self._writers_lock:
                self._writers.append(w)
        return w

    def _seal(self, w: PackWriter) -> None:
        with self._writers_lock:
            self._writers.remove(w)     # no longer open: flush() must not seal it again
        if not self._upload_threads:
            self._seal_now(w)
            return
        if self._uploads is None:
            self._uploads = concurrent.futures.ThreadPoolExecutor(self._upload_threads, "chunkrepo-upload")
        # an object store: the upload overlaps the caller's next pack (bounded by the slots)
        self._upload_slots.acquire()
        try:
            fut = self._uploads.submit(self._seal_now, w)
        except BaseException:
            self._upload_slots.release()
            raise
        fut.add_done_callback(lambda _: self._upload_slots.release())
        with self._writers_lock:
            self._upload_futures.append(fut)

    def _seal_now(self, w: PackWriter) -> None:
        try:
            entries = w.seal()
        except BaseException:
            w.abort()
            raise
        crash_point("pack-sealed")
        self._sealed.put((w.pack_id, entries, w.size))

    def _wait_uploads(self) -> None:
        """Wait for the packs being uploaded; raise the first failure."""
        with self._writers_lock:
            futs, self._upload_futures = self._upload_futures, []
        first = None
        for f in futs:
            try:
                f.result()
            except BaseException as e:
                first = first or e
        if first is not None:
            raise first

    def _may_be_indexed(self, bid: bytes) -> bool:
        """False when the blob is surely not in the index (new_ids.py); under _claim_lock."""
        return self._new_ids is None or bid in self._new_ids

    def claim_chunk(self, cid: bytes) -> bool:
        """True if the caller must store this chunk (nobody has it yet)."""
        return self.claim_chunks([cid])[0]

    def claim_chunks(self, cids: list) -> list:
        """claim_chunk for each (one lock for all): whether the caller must store it."""
        with self._claim_lock:
            pending, out = self._pending_chunks, []
            # shared: claimed there first, then looked up (has_chunk reads a snapshot of its own)
            shared = self._shared.claim(cids) if self._shared is not None else None
            for i, cid in enumerate(cids):
                new = (cid not in pending if shared is None else shared[i]) and not (
                    self._may_be_indexed(cid) and self.index.has_chunk(cid))
                if shared is not None and shared[i] and not new:
                    self._shared.release([cid])      # in the index: nothing to hold
                if new:
                    pending.add(cid)
                out.append(new)
            return out

    def share_claims(self) -> tuple:
        """From now on claim chunks in a SharedClaims that reader processes open too
        (ops/backup/reader_procs).  Returns (its path, the index's path).  A claim holds
        an id from the claim until the id's pack is committed; a claimer then looks the
        id up in the index in a snapshot taken after its claim (claim_chunks)."""
        with self._claim_lock:
            if self._shared is None:
                self._shared = SharedClaims.create()
                self._shared.claim(list(self._pending_chunks))    # stored, not committed yet
        return self._shared.path, self.repo.index.path

    def adopt_sealed(self, pack_id: bytes, entries, size: int, bytes_new: int, bytes_stored: int) -> None:
        """A pack a reader process of this session wrote and sealed, its blobs claimed in
        the shared claims: committed at the next checkpoint like one of its own."""
        with self._stats_lock:
            self.bytes_new += bytes_new
            self.bytes_stored += bytes_stored
        self._sealed.put((pack_id, entries, size))
        # the reader's pack is sealed: a kill here stops the backup (its readers die with it)
        # where a kill after one of its own packs would
        crash_point("pack-sealed")

    def store_chunk(self, cid: bytes, data) -> None:
        """Compress and append a claimed chunk to this thread's pack."""
        self.append_chunk(cid, self.compress_chunk(data), len(data))

    def compress_chunk(self, data) -> tuple:
        """The stored form of a chunk (store_chunk in two halves: this one from any thread)."""
        return compression.compress_parts(data, self._level(len(data)))

    def append_chunk(self, cid: bytes, parts: tuple, raw_length: int) -> None:
        """Append a claimed chunk compressed by compress_chunk to this thread's pack."""
        self._append(KIND_DATA, cid, parts, raw_length)

    @property
    def levels(self) -> tuple:
        """(level, level of small blobs, the largest small blob): what level_for takes."""
        return self.level, self._small_level, self._small_blob

    def _level(self, n: int) -> int:      # level_for, inlined: once per blob
        return self._small_level if n <= self._small_blob else self.level

    def _append(self, kind: int, bid: bytes, parts, raw_length: int) -> None:
        w = self._writer()
        stored = w.add_parts(kind, bid, parts, raw_length)
        with self._stats_lock:
            self.bytes_stored += stored
            if kind == KIND_DATA:
                self.bytes_new += raw_length
        if w.size >= self.pack_size or len(w.entries) >= MAX_PACK_BLOBS:
            self._local.writer = None
            self._seal(w)

    def add_chunk(self, data) -> bytes:
        cid = hash_bytes(data)
        if self.claim_chunk(cid):
            self.store_chunk(cid, data)
        return cid

    def add_tree(self, tree: Tree) -> bytes:
        data = tree.encode()
        tid = hash_bytes(data)
        with self._claim_lock:
            if tid in self._pending_trees:
                return tid
            if self._may_be_indexed(tid):
                with self.index.read() as v:
                    if v.has_tree(tid):
                        return tid
            self._pending_trees[tid] = data
        self._append(KIND_TREE, tid, compression.compress_parts(data, self._level(len(data))), len(data))
        w = self._local.writer
        if w is not None and w.record_bytes > _MAX_PENDING_TREE_BYTES:
            # records wait in memory until their pack is committed (the owner's next
            # checkpoint once it is sealed): bound that on hosts with millions of files by
            # sealing a pack early once it holds this much of them (counting the records
            # of sealed packs too sealed every later record in a pack of its own until the
            # checkpoint: 351 packs of one record in a scale-1.0 first backup)
            self._local.writer = None
            self._seal(w)
        return tid

    # -- commits --------------------------------------------------------------
    def checkpoint(self) -> int:
        """Commit the entries of every pack sealed so far; return how many packs."""
        n = 0
        while True:
            try:
                pack_id, entries, size = self._sealed.get_nowait()
            except queue.Empty:
                return n
            self._commit_pack(pack_id, entries, size, claimed=True)
            crash_point("checkpoint-committed")
            n += 1

    def _commit_pack(self, pack_id: bytes, entries, size: int, claimed: bool = False) -> None:
        """Index a sealed pack's blobs (refcount 0: garbage until a backup uses them).

        A pack of more than STEP blobs is committed in steps of STEP, its `packs`
        record last (docs/format.md, Write order): until then it is not listed, so
        a killed writer's recovery adopts it again, skipping the blobs already in.
        claimed: this session wrote the pack, every blob of it claimed as absent from
        the index or lost (and from every other pack of the session); with no lost
        blob in the index, none of them has an entry and none is looked up."""
        tree_bytes = {}
        adopted = []
        for e in entries:
            if e.kind == KIND_TREE:
                data = self._pending_trees.get(e.id)
                if data is None:   # adopted pack: read the record from the pack itself
                    adopted.append((BlobEntry(pack_id, e.offset, e.length, e.raw_length, 0), e.id))
                else:
                    tree_bytes[e.id] = data
        tree_bytes.update(self._read_records(adopted))
        # in id order: a step's ids then fall in one stretch of the key space, so it
        # changes the branch pages above that stretch only, not nearly all of them
        entries = sorted(entries, key=_ID)
        n = len(entries)
        for start in range(0, n, STEP):
            last = start + STEP >= n
            # not durable: a power cut may undo it, and recovery adopts the pack again (the
            # pack itself is durable); what must survive syncs (flush, registration)
            with self.index.write(durable=False) as w:
                if start == 0 and not last:
                    w.put_meta(COMMITTING_META, pack_id)
                if claimed and w.lost_count() == 0:
                    w.put_new_blobs(pack_id, entries[start:start + STEP], tree_bytes)
                else:
                    for e in entries[start:start + STEP]:
                        self._index_blob(w, pack_id, e, tree_bytes)
                if last and start == 0:
                    w.put_pack(pack_id, PackInfo(size, n))    # this transaction's garbage is added at commit
                elif last:
                    w.put_pack_recounted(pack_id, size, n)
                    w.delete_meta(COMMITTING_META)
            self._unsynced = True
            if not last:
                crash_point("pack-step-committed")
        chunk_ids = [e.id for e in entries if e.kind == KIND_DATA]
        with self._claim_lock:
            if self._new_ids is not None:     # before they leave the pending sets
                self._new_ids.add(chunk_ids)
                self._new_ids.add(tree_bytes)     # the pack's records, by id
            self._pending_chunks.difference_update(chunk_ids)
            for tid in tree_bytes:
                self._pending_trees.pop(tid, None)
            if self._shared is not None:     # in the index now (claimers look there after claiming)
                self._shared.release(chunk_ids)

    def _index_blob(self, w, pack_id: bytes, e, tree_bytes: dict) -> None:
        entry = BlobEntry(pack_id, e.offset, e.length, e.raw_length, 0)
        old = w.blob(e.kind, e.id)
        if old is None:      # refcount 0: garbage until a backup uses it
            if e.kind == KIND_DATA:
                w.put_chunk(e.id, entry, new=True)
            else:
                w.put_tree(e.id, entry, tree_bytes[e.id], new=True)
        elif old.lost:       # stored again: the backups that lost it are whole again
            self._restore_lost(w, e, entry._replace(refcount=old.refcount), tree_bytes)
        elif old.pack != pack_id:
            w.add_dead_copy(e.kind, pack_id, e.id, e.length)

    def _read_records(self, items) -> Dict[bytes, bytes]:
        """Directory records out of an adopted pack, [(entry, id)]: neighbours are read
        with one ranged read (Repository.read_blobs), which an object store needs."""
        items = sorted(items, key=lambda x: x[0].offset)
        out: Dict[bytes, bytes] = {}
        for (_, bid), data in zip(items, self.repo.read_blobs([(bid, e) for e, bid in items])):
            if isinstance(data, Exception):
                raise data
            out[bid] = data
        return out

    @staticmethod
    def _restore_lost(w, e, entry: BlobEntry, tree_bytes: dict) -> None:
        if e.kind == KIND_DATA:
            w.put_chunk(e.id, entry)
            return
        w.put_tree(e.id, entry, tree_bytes[e.id])
        # a lost record's children lost the references it gave them (check counts
        # only what it can read): give them back, as when a record goes 0 -> 1
        _cascade(w, _reference_children(w, tree_bytes[e.id], +1), +1)

    def flush(self) -> None:
        """Seal every open pack and commit everything sealed."""
        with self._writers_lock:
            writers = list(self._writers)
        for w in writers:
            if w.entries:
                self._seal(w)
            else:
                w.abort()
                with self._writers_lock:
                    self._writers.remove(w)
        self._local = threading.local()
        self._wait_uploads()
        self.checkpoint()
        if self._unsynced:
            self._sync()    # the packs' entries survive a power cut from here on

    def _abort_writers(self) -> None:
        try:
            self._wait_uploads()
        except Exception:
            pass        # the session failed already; what was uploaded is adopted later or pruned
        with self._writers_lock:
            for w in self._writers:
                w.abort()
            self._writers.clear()

    def commit_backup(self, rec: BackupRecord) -> None:
        """Make a backup part of the repository: record in storage, then index."""
        self.flush()
        crash_point("backup-flushed")
        # the record makes durable what this writer saw (chunks the index said were stored):
        # not if another writer may have changed the repository since (docs/format.md, "Checks
        # before durable steps")
        self._lock.check()
        crash_point("backup-checked")
        name = f"backups/{rec.id}"
        try:
            self.storage.put(name, records.encode_json(rec.to_dict()))
        except StorageError as e:
            if _landed(self.storage, name):
                # in place, but not known to survive a power cut: not registered now;
                # the next write session adopts it if it is still there
                raise StorageError(f"backup {rec.id}: its record was written but not confirmed durable "
                                   f"({e}); the next write session adopts it if it survived") from None
            raise
        crash_point("backup-stored")
        lost = self._check_after_record(rec.id)
        # registered here even so: if another writer began, this cache is refilled anyway
        # (index_cache.end_write); if none did, it must list the record it stored
        try:
            self._register_backup(rec)
        except IntegrityError:
            if lost is None:
                raise
            raise lost from None     # the other writer removed what it names: say why
        crash_point("backup-committed")
        if lost is not None:
            raise lost

    def _check_after_record(self, bid: str) -> Optional[LockLost]:
        """The lock again once the record is stored: a writer stopped between the check and
        the PUT is told so.  The record stays: another writer may have registered it and
        kept its data (check tells a sound backup from a damaged one)."""
        try:
            self._lock.check()
        except LockLost as e:
            return LockLost(e.why, f"backup {bid} was stored while it was lost, and another writer may have "
                                   f"removed data it refers to: run 'chunkrepo check'")
        return None

    def _register_backup(self, rec: BackupRecord) -> None:
        """Add the backup to the index with its references, in steps of about STEP updates.

        Its record is durable in the storage already.  Between the steps the tree
        ids still to reference are journaled in `meta` (REGISTERING_META, in the
        same transaction as the updates), so a killed writer's recovery rolls the
        registration forward from there (docs/format.md, Write order)."""
        root = bytes.fromhex(rec.root)
        with self.index.read() as v:
            if v.backup(rec.id) is not None:
                return
            if v.tree(root) is None:
                raise IntegrityError(f"backup {rec.id} has no root record")
        self._register_steps(rec, [root])

    def _register_steps(self, rec: BackupRecord, stack: list, expanded: Optional[list] = None,
                        pos: int = 0) -> None:
        """Reference the trees on the stack (and what they hold), then add the backup.

        Two kinds of step (docs/format.md, Write order): one references directory
        records from the stack, about STEP of them, and collects the chunk ids of
        each record going 0 -> 1 (its id joins `expanded`, journaled); once about
        REGISTER_BATCH chunk references are collected, or the stack is empty,
        they are added in id order in steps of `step` references (the journal
        keeps how far).  Consecutive ids share the index's pages, so a step
        changes a few pages where random order changed one page per reference
        (docs/design.md, Memory at scale); `step` grows while a step writes less
        than STEP_WRITE_TARGET, which keeps a step's pages (LMDB holds a copy of
        each until the commit) as few where ids are spread thin (millions of chunks)."""
        expanded = list(expanded or ())
        refs = _chunk_refs(self.index, expanded)
        pos = pos if refs else 0
        step, batch_size = STEP, 0
        while True:
            if stack and len(refs) < REGISTER_BATCH and not pos:     # (a batch begun is finished first)
                with self.index.write(durable=False) as w:
                    n = len(expanded)
                    _expand(w, stack, expanded, refs, budget=STEP)
                    if len(expanded) != n:
                        w.put_meta(REGISTERING_BATCH_META, b"".join(expanded))
                    w.put_meta(REGISTERING_META, _journal(rec.id, stack, 0))
            elif refs:
                refs.sort()
                if batch_size:
                    # a step of `step` references spans step/len(refs) of the id space: a batch
                    # of another size spreads the same step over more pages or fewer (the last,
                    # short batch of a 100k-file backup wrote 4.9 MiB in one step sized by the
                    # batch before it)
                    step = max(STEP, min(16 * STEP, step * len(refs) // batch_size))
                batch_size = len(refs)
                while pos < len(refs):
                    before = _written()
                    with self.index.write(durable=False) as w:
                        end = min(pos + step, len(refs))
                        w.add_chunk_refs(refs, pos, end)
                        full = end - pos == step    # a batch's short last step says little
                        pos = end
                        if pos == len(refs):
                            w.delete_meta(REGISTERING_BATCH_META)
                        w.put_meta(REGISTERING_META, _journal(rec.id, stack, pos if pos < len(refs) else 0))
                    if full:
                        step = _next_step(step, before, _written())
                    self._unsynced = True
                    crash_point("backup-registering")
                expanded, refs, pos = [], [], 0
                continue
            else:
                with self.index.write(durable=False) as w:
                    w.put_backup(rec.id, records.encode_json(rec.to_dict()))
                    w.delete_meta(REGISTERING_META)
                    w.delete_meta(REGISTERING_BATCH_META)    # records without chunks, if any
                break
            self._unsynced = True
            crash_point("backup-registering")
        self._sync()     # registered: from here on it survives a power cut

    def _sync(self) -> None:
        """Make the steps committed so far durable (docs/format.md, Write order)."""
        self.index.sync()
        self._unsynced = False

    def _resume_registration(self, journal: bytes) -> int:
        """Roll forward the registration a killed writer journaled; 1 if it was finished."""
        bid, ids, *rest = records.unpack_msgpack(journal)    # [id, stack] before the batches
        pos = rest[0] if rest else 0
        with self.index.read() as v:
            batch = v.meta(REGISTERING_BATCH_META) if rest else None
        try:
            rec = self._stored_record(f"backups/{bid}")[0]
        except NotFound:
            # its record went from the storage (by hand): the references it added only
            # keep blobs alive; check --repair recounts them
            with self.index.write() as w:
                w.delete_meta(REGISTERING_META)
                w.delete_meta(REGISTERING_BATCH_META)
            return 0
        self._register_steps(rec, _ids(ids), _ids(batch or b""), pos)
        return 1


def _batches(entries: list, limit: int = 16 << 20):
    """entries in runs of at most about limit raw bytes (what one read_blobs holds)."""
    batch, size = [], 0
    for e in entries:
        if batch and size + e.raw_length > limit:
            yield batch
            batch, size = [], 0
        batch.append(e)
        size += e.raw_length
    if batch:
        yield batch


def _ids(joined: bytes) -> list:
    return [joined[i:i + 32] for i in range(0, len(joined), 32)]


def _journal(bid: str, stack: list, pos: int) -> bytes:
    """meta["registering"]: the backup, the tree ids still to reference, and how many
    of the batch's sorted chunk references are added (docs/format.md)."""
    return records.pack_msgpack([bid, b"".join(stack), pos])


def _written() -> Optional[int]:
    """Bytes this process has passed to write calls (Linux /proc/self/io), or None."""
    try:
        with open("/proc/self/io", "rb") as f:
            for line in f:
                if line.startswith(b"wchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _next_step(step: int, before: Optional[int], after: Optional[int]) -> int:
    """The next step's reference count: at most twice this one, fewer if this one wrote
    more than STEP_WRITE_TARGET, between STEP and 16 * STEP."""
    if before is None or after is None:
        return step
    scaled = int(step * min(2.0, STEP_WRITE_TARGET / max(after - before, 4096)))
    return max(STEP, min(scaled, 16 * STEP))


def _expand(w, stack: list, expanded: list, refs: list, budget: int) -> None:
    """Reference about `budget` trees from the stack; a record going 0 -> 1 joins
    `expanded`, its subtrees the stack and its chunk ids `refs` (added later, sorted)."""
    done = 0
    while stack and done < budget and len(refs) < REGISTER_BATCH:
        tid = stack.pop()
        done += 1
        if w.add_tree_ref(tid, +1) != 0:
            continue    # referenced already (or lost: its children hold no references from it)
        expanded.append(tid)
        stack.extend(_collect(_record(w, tid), refs))


def _chunk_refs(index, expanded: list) -> list:
    """The chunk ids the expanded records list (a resumed batch's, collected again)."""
    refs: list = []
    if expanded:
        with index.read() as v:
            for tid in expanded:
                _collect(_record(v, tid), refs)
    return refs


def _record(view, tid: bytes) -> bytes:
    """A directory record's bytes from the index (every indexed record has them)."""
    data = view.tree_data(tid)
    if data is None:
        raise NotFound(f"directory record {tid.hex()} has no cached data")
    return data


_CHUNKS, _SUBTREE = Node._fields.index("chunks"), Node._fields.index("subtree")


def _collect(data: bytes, refs: list) -> list:
    """Append a record's chunk ids to refs; return its subtrees (from the raw entries:
    a registration reads every record of a first backup, no Node needed)."""
    subs = []
    for e in records.decode_tree(data):
        if e[_SUBTREE] is not None:
            subs.append(e[_SUBTREE])
        c = e[_CHUNKS]
        refs.extend([c[i:i + 32] for i in range(0, len(c), 32)])
    return subs


def _landed(storage, name: str) -> bool:
    try:
        return storage.exists(name)
    except (OSError, StorageError):
        return False


def decref_tree(w, root: bytes) -> None:
    """Remove one reference from a tree; a record going 1 -> 0 releases its children.

    The reverse of registering a backup (a record going 0 -> 1 references its
    children): blobs reaching 0 enter the garbage set (the index does that), so
    forgetting a backup costs what it frees."""
    _cascade(w, [root], -1)


def _cascade(w, stack: list, delta: int) -> None:
    """Change the references of the trees on the stack, and of their children for each
    record that goes 0 -> 1 (or 1 -> 0)."""
    edge = 0 if delta > 0 else 1     # the count before the change that (un)references children
    while stack:
        tid = stack.pop()
        # None: a lost record (or one named but never stored, now lost: docs/format.md);
        # its children hold no references from it
        if w.add_tree_ref(tid, delta) != edge:
            continue
        stack.extend(_reference_children(w, _record(w, tid), delta))


def _reference_children(w, data: bytes, delta: int) -> list:
    """Change the refcounts of a record's chunks; return its subtrees."""
    refs: list = []
    subs = _collect(data, refs)
    for cid in refs:
        w.add_chunk_ref(cid, delta)
    return subs


__all__ = ["WriteSession", "decref_tree"]
