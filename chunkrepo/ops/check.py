"""Verifying a repository: structure always, every byte with read_data.

Without read_data (cheap: the index, pack sizes and trailers, the directory
records cached in the index):
  * every pack the index lists exists, has the size the index recorded, and a
    readable trailer that agrees with the index entries pointing into it;
  * every index entry lies inside its pack (offset + length <= size);
  * every backup record file (backups/ID) holds that backup's record: the
    index's copy for a listed backup, one recovery can register otherwise;
  * every backup's root and every directory record below it resolves and
    hashes to its id; every chunk a file names is in the index;
  * every directory snapshot's manifest (read: its one small file) names
    only paths a restore can place safely (ops/snapshot/manifest.unsafe_path);
  * every reference count equals a recount from scratch, as the cascade of a
    backup's registration (session.py) defines it: a root gets one per backup,
    and each directory record reachable from a backup adds one to each child
    record and one to each chunk of its files (with multiplicity); while a backup's
    registration is journaled (a writer registering it, or killed doing so),
    a count above the recount is the references it has added so far;
  * the garbage set is exactly the indexed blobs whose stored count is 0 plus
    the blobs of pack trailers the index does not point to (duplicate copies),
    and each pack record's dead bytes and dead blobs are the sums over its
    garbage.
With read_data, additionally every indexed blob is read (one read per pack,
then sliced), decompressed and re-hashed.

Damage is reported, never raised: the report names the backups and paths a bad
or missing blob affects.  Memory holds sets and counters of ids and one or two
packs' bytes at a time.
"""

import concurrent.futures
import math
import os
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from ..codec import compression, records
from ..codec.hashing import hash_bytes
from ..errors import LOST_WHY, ChunkrepoError, IntegrityError, NotFound, StorageError
from ..index import PackInfo
from ..index.lmdb_index import COMMITTING_META, GARBAGE_META, REGISTERING_META
from ..model import BackupRecord, Tree, decode_record
from ..model.nodes import DIR
from ..repository.packs import KIND_DATA, KIND_TREE, pack_id_from_name, pack_name, read_trailer
from .snapshot import manifest as mf
from .snapshot.store import read_manifest

_MAX_PER_KIND = 50     # individual messages per kind of error; the rest are summarized


@dataclass
class CheckReport:
    ok: bool = True
    errors: List[str] = field(default_factory=list)
    damaged: Dict[str, List[str]] = field(default_factory=dict)   # backup id -> sorted paths
    # backup id -> sorted paths whose data is in packs that could not be read (an I/O error:
    # not damage, it may pass)
    unreadable: Dict[str, List[str]] = field(default_factory=dict)
    backups: int = 0
    trees: int = 0
    chunks: int = 0
    packs: int = 0
    bytes_checked: int = 0            # stored bytes read and re-hashed (read_data)
    packs_read: int = 0               # packs read and re-hashed (all, or --read-data-subset's)
    unreferenced_packs: int = 0       # sealed packs not in the index yet: the next writer adopts them
    pending_deletion: int = 0         # packs prune dropped whose files wait for readers to move on
    garbage_blobs: int = 0            # stored blobs nothing references (prune frees them)
    garbage_bytes: int = 0
    pending_backups: int = 0          # stored backup records not in the index yet: likewise
    lost_blobs: int = 0               # blobs check --repair marked lost that backups still reference
    marked_damaged: List[str] = field(default_factory=list)   # backups the index marks damaged
    read_data: bool = False
    elapsed: float = 0.0
    findings: Optional["Findings"] = field(default=None, repr=False, compare=False)   # for repair
    repair: Optional[object] = None   # ops.repair.RepairReport, when check --repair ran

    def to_dict(self) -> dict:
        return {"ok": self.ok, "errors": list(self.errors),
                "damaged": {k: list(v) for k, v in sorted(self.damaged.items())},
                "unreadable": {k: list(v) for k, v in sorted(self.unreadable.items())},
                "backups": self.backups, "trees": self.trees, "chunks": self.chunks,
                "packs": self.packs, "bytes_checked": self.bytes_checked, "packs_read": self.packs_read,
                "unreferenced_packs": self.unreferenced_packs,
                "pending_deletion": self.pending_deletion, "garbage_blobs": self.garbage_blobs,
                "garbage_bytes": self.garbage_bytes,
                "pending_backups": self.pending_backups, "lost_blobs": self.lost_blobs,
                "marked_damaged": list(self.marked_damaged), "read_data": self.read_data,
                "elapsed": round(self.elapsed, 3),
                **({"repair": self.repair.to_dict()} if self.repair is not None else {})}


@dataclass
class Findings:
    """What check found, in the terms repair (ops.repair) acts on."""
    damaged_packs: set = field(default_factory=set)      # missing, truncated, unreadable or with bad blobs
    bad_chunks: set = field(default_factory=set)
    bad_trees: set = field(default_factory=set)
    by_pack: dict = field(default_factory=dict)          # pack id -> [(offset, length, raw, id, kind)]
    mismatch: List[str] = field(default_factory=list)    # the index disagrees with sound packs
    refcounts: dict = field(default_factory=dict)        # (kind, id) -> recount, where the count differs
    garbage: Optional[dict] = None                       # the garbage set as it should be, if it differs
    missing: dict = field(default_factory=dict)          # id -> kind: referenced, not in the index
    chunk_refs: Counter = field(default_factory=Counter)   # the recount
    tree_refs: Counter = field(default_factory=Counter)
    kinds: set = field(default_factory=set)              # kinds of the errors found ("lost": lost data)
    unreadable_packs: set = field(default_factory=set)   # I/O errors: maybe passing, never repaired
    lost: dict = field(default_factory=dict)             # id -> kind of the blobs marked lost
    bad_records: dict = field(default_factory=dict)      # backup id -> the index's record: file missing or bad
    complete: bool = True                                # False: check stopped early

    def recount_is_exact(self) -> bool:
        """The recount saw every record a backup references (or the ones it missed are lost
        or missing, which hold no references by definition): it may replace the counts."""
        unread = self.bad_trees - set(self.lost) - set(self.missing)
        return self.complete and not self.unreadable_packs and not unread


def _short(b: bytes) -> str:
    return b.hex()


def _verify_pack_bytes(buf, entries):
    """Worker: decompress and hash each (offset, length, raw_length, id, kind) of one pack."""
    bad = []
    checked = 0
    mv = memoryview(buf)
    size = len(buf)
    for off, length, raw_length, bid, kind in entries:
        if off + length > size:
            continue     # reported by the structural check already
        try:
            data = compression.decompress(mv[off:off + length], raw_length)
            if hash_bytes(data) != bid:
                raise IntegrityError("content fails its hash")
        except IntegrityError as e:
            bad.append((kind, bid, str(e)))
        except Exception as e:   # a decoder's own failure on garbage is damage too
            bad.append((kind, bid, f"cannot decode: {e}"))
        checked += length
    return bad, checked


class _Checker:
    def __init__(self, repo, report: CheckReport, read_data: bool, progress: Optional[Callable]):
        self.repo = repo
        self.storage = repo.storage
        self.rep = report
        self.read_data = read_data
        self.subset: Optional[str] = None
        self.progress = progress
        self._kind_counts: Counter = Counter()
        self.bad_chunks: set = set()      # chunk ids missing or damaged
        self.bad_trees: set = set()       # directory record ids missing or damaged
        self.unread_chunks: set = set()   # of those, the ones only in packs that could not be read
        self.unread_trees: set = set()
        self.by_pack: Dict[bytes, list] = defaultdict(list)   # pack -> index entries in it
        self.pack_real_size: Dict[bytes, int] = {}
        self.chunk_refs: Counter = Counter()
        self.tree_refs: Counter = Counter()
        self.roots: Dict[str, bytes] = {}
        self.want_garbage: Dict[bytes, tuple] = {}   # pack id + blob id -> (kind, stored length)
        self.no_trailer: set = set()                 # packs whose duplicate copies are unknown
        self.pack_records: Dict[bytes, PackInfo] = {}
        self.lost: Dict[bytes, int] = {}             # blob id -> kind, of blobs marked lost
        self.found = Findings(bad_chunks=self.bad_chunks, bad_trees=self.bad_trees, by_pack=self.by_pack,
                              chunk_refs=self.chunk_refs, tree_refs=self.tree_refs, lost=self.lost)
        report.findings = self.found
        self._done = 0
        self._total = 0
        self.committing: Optional[bytes] = None     # a pack whose entries are being committed in steps
        self.registering = False                    # a backup's references are being added in steps

    # -- reporting -------------------------------------------------------------
    def error(self, kind: str, msg: str) -> None:
        self._kind_counts[kind] += 1
        self.found.kinds.add(kind)
        if self._kind_counts[kind] <= _MAX_PER_KIND:
            self.rep.errors.append(msg)

    def _summarize(self) -> None:
        for kind, n in sorted(self._kind_counts.items()):
            if n > _MAX_PER_KIND:
                self.rep.errors.append(f"... and {n - _MAX_PER_KIND} more errors of the kind '{kind}'")

    def _tick(self) -> None:
        self._done += 1
        if self.progress is not None:
            self.progress(self._done, self._total)

    # -- the run ---------------------------------------------------------------
    def run(self) -> None:
        with self.repo.index.read() as v:
            # a writer's steps in progress (docs/format.md, Write order); the next write
            # session's recovery finishes them, as it adopts unlisted packs and records
            self.committing = v.meta(COMMITTING_META)
            self.registering = v.meta(REGISTERING_META) is not None
            self._index_entries(v)
            pack_info = self._pack_table(v)
            self._total = len(pack_info) * (2 if self.read_data else 1)
            self._packs(pack_info)
            # the packs' bytes are read and hashed by two threads (zstd and blake3
            # release the GIL) while this one checks the structure
            with concurrent.futures.ThreadPoolExecutor(2, "chunkrepo-check") as pool:
                try:
                    reads = self._start_reads(pool, pack_info) if self.read_data else []
                    self._backups(v)
                    self._walk_trees(v)
                    self._refcounts(v)
                    self._garbage(v)
                    for item in reads:
                        self._collect(*item)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
            self._map_damage(v)
        self._summarize()

    def _index_entries(self, v) -> None:
        for kind, it in ((KIND_DATA, v.all_chunks()), (KIND_TREE, v.all_trees())):
            for bid, e in it:
                if kind == KIND_DATA:
                    self.rep.chunks += 1
                else:
                    self.rep.trees += 1
                if e.lost:
                    self.lost[bid] = kind
                else:
                    self.by_pack[e.pack].append((e.offset, e.length, e.raw_length, bid, kind))
        self.rep.lost_blobs = len(self.lost)
        if len(self.lost) != v.lost_count():
            self.error("lost set", f"{len(self.lost)} index entries are marked lost, the lost set "
                               f"holds {v.lost_count()}")
        self.rep.marked_damaged = sorted(bid for bid, _ in v.damaged())

    def _pack_table(self, v) -> Dict[bytes, tuple]:
        info = {}
        for pid, raw in v.all_packs():
            try:
                p = PackInfo.decode(raw)
                info[pid] = (p.size, p.count)
                self.pack_records[pid] = p
            except Exception:
                self.error("pack record", f"index record of pack {_short(pid)} is unreadable")
                self.found.mismatch.append(f"the record of pack {_short(pid)}")
                info[pid] = (None, None)
        self.rep.packs = len(info)
        for pid in self.by_pack:
            if pid not in info and pid != self.committing:
                n = len(self.by_pack[pid])
                self.error("unknown pack", f"{n} index entries point into pack {_short(pid)}, "
                                           f"which the index does not list")
                self.found.mismatch.append(f"entries in unlisted pack {_short(pid)}")
                info[pid] = (None, None)
        try:
            stored = set(self.storage.list("packs"))
        except OSError as e:
            self.error("storage", f"cannot list packs: {e}")
            stored = set()
        pending = {pid for pid, _, _ in v.pending()}
        self.rep.pending_deletion = len(pending)
        self.rep.unreferenced_packs = sum(1 for n in stored
                                          if _is_pack_name(n) and pack_id_from_name(n) not in info
                                          and pack_id_from_name(n) not in pending)
        return info

    def _unreadable(self, pid: bytes, entries) -> None:
        """An I/O error, not proven damage: its blobs count as bad (not as damaged, unless
        found so), repair leaves it alone."""
        self.found.unreadable_packs.add(pid)
        for _, _, _, bid, kind in entries:
            bad, unread = self._sets(kind)
            if bid not in bad:
                unread.add(bid)
            bad.add(bid)

    def _lose(self, pid: bytes, entries) -> None:
        self.found.damaged_packs.add(pid)
        for _, _, _, bid, kind in entries:
            bad, unread = self._sets(kind)
            bad.add(bid)
            unread.discard(bid)

    def _sets(self, kind: int) -> tuple:
        """(bad, unreadable) ids of that kind of blob."""
        if kind == KIND_DATA:
            return self.bad_chunks, self.unread_chunks
        return self.bad_trees, self.unread_trees

    def _packs(self, pack_info) -> None:
        for pid in sorted(pack_info):
            recorded, count = pack_info[pid]
            name = pack_name(pid)
            self.no_trailer.add(pid)      # until its trailer is read
            entries = self.by_pack.get(pid, [])
            try:
                real = self.storage.size(name)
            except NotFound:
                self.error("missing pack", f"pack {_short(pid)} is missing "
                                           f"({len(entries)} blobs of the index are in it)")
                self._lose(pid, entries)
                self._tick()
                continue
            except (OSError, ChunkrepoError) as e:
                self.error("unreadable pack", f"pack {_short(pid)} cannot be examined: {e}")
                self._unreadable(pid, entries)
                self._tick()
                continue
            self.pack_real_size[pid] = real
            if recorded is not None and real != recorded:
                what = "truncated" if real < recorded else "longer than recorded"
                self.error("pack size", f"pack {_short(pid)} is {what}: {real} bytes, "
                                        f"the index recorded {recorded}")
                self.found.damaged_packs.add(pid)
            outside = [e for e in entries if e[0] + e[1] > real]
            if outside:
                self.error("pack size", f"pack {_short(pid)}: {len(outside)} index entries lie "
                                        f"beyond its end ({real} bytes)")
                self._lose(pid, outside)
            try:
                trailer = read_trailer(self.storage, name)
            except (StorageError, OSError) as e:
                self.error("unreadable pack", f"pack {_short(pid)}: trailer cannot be read: {e}")
                self._unreadable(pid, [])
                trailer = None
            except (ChunkrepoError, ValueError) as e:
                self.error("pack trailer", f"pack {_short(pid)}: trailer unreadable: {e}")
                self.found.damaged_packs.add(pid)
                trailer = None
            except Exception as e:
                self.error("pack trailer", f"pack {_short(pid)}: trailer undecodable: {e}")
                self.found.damaged_packs.add(pid)
                trailer = None
            if trailer is not None:
                self.no_trailer.discard(pid)
                if count is not None and len(trailer) != count:
                    self.error("pack trailer", f"pack {_short(pid)}: trailer lists {len(trailer)} "
                                               f"blobs, the index recorded {count}")
                    self.found.mismatch.append(f"the blob count of pack {_short(pid)}")
                listed = {(e.offset, e.length, e.raw_length, bytes(e.id), e.kind) for e in trailer}
                indexed = set(entries)
                for t in listed - indexed:       # a copy the index does not point to: garbage
                    self.want_garbage[pid + t[3]] = (t[4], t[1])
                stray = [e for e in entries if e not in listed]
                if stray:
                    self.error("pack trailer", f"pack {_short(pid)}: {len(stray)} index entries do not "
                                               f"match its trailer (e.g. blob {_short(stray[0][3])})")
                    self.found.mismatch.append(f"the entries of pack {_short(pid)}")
            self._tick()

    def _backups(self, v) -> None:
        for bid, raw in v.backups():
            self.rep.backups += 1
            try:
                rec = BackupRecord.from_dict(records.decode_json(raw))
                root = bytes.fromhex(rec.root)
                if len(root) != 32:
                    raise ValueError("bad root id")
            except Exception as e:
                self.error("backup record", f"backup {bid}: record in the index is unreadable: {e}")
                continue
            self.roots[bid] = root
            self.tree_refs[root] += 1
            self._record_file(bid, raw)
            if rec.kind == "snapshot" and (rec.snapshot or {}).get("type") == "dir":
                self._snapshot_manifest(bid, rec)
        try:
            names = list(self.storage.list("backups"))
        except OSError:
            names = []
        pending = [n for n in names if v.backup(n.rsplit("/", 1)[1]) is None]
        self.rep.pending_backups = len(pending)
        for name in pending:
            self._pending_record(name)

    def _record_file(self, bid: str, raw: bytes) -> None:
        """The record file of an indexed backup is there and holds that backup's record;
        if not, check --repair writes it again from the index's copy (Findings.bad_records)."""
        name = f"backups/{bid}"
        try:
            stored = self.storage.get(name)
        except NotFound:
            self.error("backup record", f"backup {bid}: its record file {name} is missing "
                                        f"(check --repair writes it again from the index)")
            self.found.bad_records[bid] = raw
            return
        if stored == raw:
            return
        try:
            same = decode_record(stored, bid) == decode_record(raw, bid)
        except ValueError as e:
            same, why = False, f"damaged ({e})"
        else:
            why = "another record than the index holds"
        if not same:
            self.error("backup record", f"backup {bid}: its record file {name} is {why} "
                                        f"(check --repair writes it again from the index)")
            self.found.bad_records[bid] = raw

    def _snapshot_manifest(self, bid: str, rec: BackupRecord) -> None:
        """A directory snapshot's manifest names only paths a restore can place safely
        (restores refuse it otherwise); one small read per directory snapshot."""
        try:
            entries = mf.decode(read_manifest(self.repo, rec))
        except (ChunkrepoError, ValueError, OSError):
            return          # a missing or damaged blob: reported where the trees are walked
        why = mf.unsafe_path((e.path, e.type) for e in entries)
        if why is not None:
            digest = (rec.snapshot or {}).get("digest", "?")
            self.error("snapshot manifest", f"snapshot {bid} (digest {digest[:12]}): its manifest has an "
                                            f"unsafe path {why}; restores refuse it")

    def _pending_record(self, name: str) -> None:
        """A record file the index does not list yet must be one recovery can register."""
        try:
            decode_record(self.storage.get(name), name.rsplit("/", 1)[1])
        except NotFound:
            pass           # deleted meanwhile (a forget)
        except ValueError as e:
            self.error("backup record", f"{name} is damaged ({e}) and not in the index: its backup cannot be "
                                        f"registered (put the file back from a copy, or move it out of backups/ "
                                        f"to give that backup up)")

    def _tree(self, v, tid: bytes) -> Optional[Tree]:
        """A directory record, verified; None (and marked bad) if it cannot be had."""
        data = v.tree_data(tid)
        entry = v.tree(tid)
        if entry is None:
            return None
        if entry.lost:
            raise _BadTree(f"it was lost: {LOST_WHY}")
        try:
            if data is None:
                data = self.repo.read_blob(entry, tid)
            elif hash_bytes(data) != tid:
                raise IntegrityError("its cached copy in the index fails its hash")
            return Tree.decode(data)
        except (ChunkrepoError, OSError) as e:
            raise _BadTree(str(e)) from None
        except Exception as e:
            raise _BadTree(f"undecodable: {e}") from None

    def _pack_copy(self, v, tid: bytes) -> Optional[Tree]:
        entry = v.tree(tid)
        if entry is None:
            return None
        try:
            return Tree.decode(self.repo.read_blob(entry, tid))
        except Exception:
            return None

    def _walk_trees(self, v) -> None:
        seen = set()
        stack = list(dict.fromkeys(self.roots.values()))
        missing_chunks = set()
        while stack:
            tid = stack.pop()
            if tid in seen:
                continue
            seen.add(tid)
            try:
                tree = self._tree(v, tid)
            except _BadTree as e:
                self.error("lost" if tid in self.lost else "directory record",
                           f"directory record {_short(tid)}: {e}")
                self.bad_trees.add(tid)
                tree = self._pack_copy(v, tid)    # still count what it references, if we can
                if tree is None:
                    continue
            if tree is None:
                self.error("directory record", f"directory record {_short(tid)} is not in the index")
                self.bad_trees.add(tid)
                self.found.missing[tid] = KIND_TREE
                continue
            for node in tree.entries:
                sub = node.subtree
                if sub is not None:
                    self.tree_refs[sub] += 1
                    if sub not in seen:
                        stack.append(sub)
                c = node.chunks
                for i in range(0, len(c), 32):
                    cid = c[i:i + 32]
                    self.chunk_refs[cid] += 1
            # existence of chunks: once per distinct id, below
        for cid in self.chunk_refs:
            if not v.has_chunk(cid):
                missing_chunks.add(cid)
        for cid in sorted(missing_chunks):
            if cid in self.lost:
                self.error("lost", f"chunk {_short(cid)} was lost: {LOST_WHY}; a backup of the "
                                   f"unchanged file stores it again")
            else:
                self.error("missing chunk", f"chunk {_short(cid)} is referenced but not in the index")
                self.found.missing[cid] = KIND_DATA
        self.bad_chunks |= missing_chunks

    def _refcounts(self, v) -> None:
        for kind, it, refs, what in ((KIND_DATA, v.all_chunks(), self.chunk_refs, "chunk"),
                                     (KIND_TREE, v.all_trees(), self.tree_refs, "directory record")):
            for bid, e in it:
                if e.refcount == 0 and not e.lost and e.pack != self.committing:
                    self.want_garbage[e.pack + bid] = (kind, e.length)
                want = refs.get(bid, 0)
                if e.refcount != want and not (self.registering and e.refcount > want):
                    self.error("reference count", f"{what} {_short(bid)} has reference count {e.refcount}, "
                                                  f"recount gives {want}")
                    self.found.refcounts[(kind, bid)] = want

    def _garbage(self, v) -> None:
        """The garbage set and the packs' dead accounting against the stored counts and trailers."""
        if v.meta(GARBAGE_META) is None and v.garbage_count() == 0:
            return        # an index no write session has opened since the garbage set exists
        dead: Dict[bytes, list] = defaultdict(lambda: [0, 0])
        want_all = dict(self.want_garbage)
        errors_before = sum(self._kind_counts[k] for k in ("garbage set", "pack accounting"))
        for g in v.garbage():
            if g.pack == self.committing:
                continue      # not listed yet: an unreferenced pack
            key = g.pack + g.id
            self.rep.garbage_blobs += 1
            self.rep.garbage_bytes += g.length
            d = dead[g.pack]
            d[0] += g.length
            d[1] += 1
            want = self.want_garbage.pop(key, None)
            if want is None:
                if g.pack in self.no_trailer:
                    continue
                e = v.blob(g.kind, g.id)
                why = (f"its reference count is {e.refcount}" if e is not None and e.pack == g.pack
                       else "the pack holds no such unreferenced copy")
                self.error("garbage set", f"blob {_short(g.id)} of pack {_short(g.pack)} is in the garbage "
                                          f"set, but {why}")
            elif want != (g.kind, g.length):
                self.error("garbage set", f"blob {_short(g.id)} of pack {_short(g.pack)}: garbage entry "
                                          f"says kind {g.kind}, {g.length} bytes; expected {want}")
        for key in sorted(self.want_garbage):
            pid, bid = key[:16], key[16:]
            self.error("garbage set", f"blob {_short(bid)} of pack {_short(pid)} is unreferenced but not "
                                      f"in the garbage set (prune would never free it)")
        for pid, p in sorted(self.pack_records.items()):
            got = tuple(dead.get(pid, (0, 0)))
            if (p.dead_bytes, p.dead_blobs) != got:
                self.error("pack accounting", f"pack {_short(pid)} records {p.dead_blobs} dead blobs "
                                              f"({p.dead_bytes} bytes); its garbage holds {got[1]} "
                                              f"({got[0]} bytes)")
        for pid in sorted(set(dead) - set(self.pack_records)):
            self.error("garbage set", f"garbage entries for pack {_short(pid)}, which the index does not list")
        if sum(self._kind_counts[k] for k in ("garbage set", "pack accounting")) > errors_before \
                and not self.no_trailer:     # (a pack's duplicate copies are known from its trailer only)
            self.found.garbage = want_all

    # -- read_data ---------------------------------------------------------------
    def _read_pack(self, pid: bytes, entries):
        """Verify a pack's blobs reading it in windows of about a read task's bytes
        (ReadPlan.batch_bytes: few large reads, and memory independent of the pack
        size; run beside the structural check, 4 MiB windows locally made the peak
        RSS of the scale-1.0 corpus's check ~88 MiB, 2 MiB ~83, at the same speed)."""
        window = self.repo.read_plan.batch_bytes
        name, size = pack_name(pid), self.pack_real_size[pid]
        entries = sorted(entries)
        bad, checked, i = [], 0, 0
        while i < len(entries):
            start, j = entries[i][0], i + 1
            while j < len(entries) and entries[j][0] + entries[j][1] - start <= window:
                j += 1
            group = entries[i:j]
            end = min(max(e[0] + e[1] for e in group), size)
            buf = self.storage.get(name, start, end - start) if end > start else b""
            b, c = _verify_pack_bytes(buf, [(o - start, n, r, bid, k) for o, n, r, bid, k in group])
            bad += b
            checked += c
            i = j
        return bad, checked

    def _start_reads(self, pool, pack_info) -> list:
        """Submit every pack to read; [(pack id, entries, future)] in pack order.  Each
        is read in windows when its turn comes, so memory stays at a window per thread."""
        todo = [pid for pid in sorted(pack_info) if pid in self.pack_real_size and self.by_pack.get(pid)]
        todo = select_packs(todo, self.subset)
        self.rep.packs_read = len(todo)
        skipped = len(pack_info) - len(todo)
        for _ in range(skipped):
            self._tick()
        out = []
        for pid in todo:
            entries = self.by_pack[pid]
            out.append((pid, entries, pool.submit(self._read_pack, pid, entries)))
        return out

    def _collect(self, pid, entries, fut) -> None:
        try:
            bad, checked = fut.result()
        except IntegrityError as e:
            self.error("damaged blob", f"pack {_short(pid)} is damaged: {e}")
            self._lose(pid, entries)
            self._tick()
            return
        except (ChunkrepoError, OSError) as e:
            self.error("unreadable pack", f"pack {_short(pid)} cannot be read: {e}")
            self._unreadable(pid, entries)
            self._tick()
            return
        self.rep.bytes_checked += checked
        for kind, bid, msg in bad:
            what = "chunk" if kind == KIND_DATA else "directory record"
            self.error("damaged blob", f"{what} {_short(bid)} in pack {_short(pid)} is damaged: {msg}")
            (self.bad_chunks if kind == KIND_DATA else self.bad_trees).add(bid)
            self.found.damaged_packs.add(pid)
        self._tick()

    # -- damage -> backups and paths ---------------------------------------------
    def _map_damage(self, v) -> None:
        """The backups and paths that bad blobs affect: damaged ones (missing, lost, proven
        damaged) in rep.damaged; those only in packs that could not be read in rep.unreadable."""
        self.rep.damaged = self._affected(v, self.bad_chunks - self.unread_chunks,
                                          self.bad_trees - self.unread_trees)
        self.rep.unreadable = self._affected(v, self.unread_chunks, self.unread_trees)

    def _affected(self, v, bad_chunks: set, bad_trees: set) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        if not bad_chunks and not bad_trees:
            return out
        # the other map's bad records (damaged ones, mapping the unreadable): not walked here
        dirty: Dict[bytes, bool] = dict.fromkeys(self.bad_trees - bad_trees - self.unread_trees, False)
        trees: Dict[bytes, Optional[Tree]] = {}

        def load(tid):
            if tid not in trees:
                try:
                    trees[tid] = None if tid in bad_trees else self._tree(v, tid)
                except _BadTree:
                    trees[tid] = None
            return trees[tid]

        def is_dirty(root: bytes) -> bool:
            stack = [(root, False)]
            while stack:
                tid, expanded = stack.pop()
                if tid in dirty:
                    continue
                tree = load(tid)
                if tree is None:
                    dirty[tid] = True
                    continue
                subs = [n.subtree for n in tree.entries if n.subtree is not None]
                if not expanded:
                    stack.append((tid, True))
                    stack.extend((s, False) for s in subs if s not in dirty)
                    continue
                bad = any(dirty.get(s, False) for s in subs)
                if not bad:
                    for n in tree.entries:
                        c = n.chunks
                        if any(c[i:i + 32] in bad_chunks for i in range(0, len(c), 32)):
                            bad = True
                            break
                dirty[tid] = bad
                if not bad:
                    trees.pop(tid, None)    # clean: never needed again
            return dirty[root]

        for bid, root in sorted(self.roots.items()):
            if not is_dirty(root):
                continue
            paths = []
            stack = [(b"", root)]
            while stack:
                prefix, tid = stack.pop()
                tree = load(tid)
                if tree is None:
                    paths.append("/" + os.fsdecode(prefix))
                    continue
                for n in tree.entries:
                    path = prefix + b"/" + n.name if prefix else n.name
                    if n.subtree is not None and n.kind == DIR:
                        if dirty.get(n.subtree, True):
                            stack.append((path, n.subtree))
                        continue
                    c = n.chunks
                    if any(c[i:i + 32] in bad_chunks for i in range(0, len(c), 32)):
                        paths.append("/" + os.fsdecode(path))
            out[bid] = sorted(set(paths))
        return out


class _BadTree(Exception):
    pass


def _is_pack_name(name: str) -> bool:
    try:
        return len(pack_id_from_name(name)) == 16
    except ValueError:
        return False


def select_packs(pids: list, spec: Optional[str]) -> list:
    """The packs --read-data-subset names: 'n/k' (the n-th of k fixed slices by
    pack id, so k nights cover everything) or 'P%' (a random P percent)."""
    if not spec:
        return pids
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if m:
        n, k = int(m.group(1)), int(m.group(2))
        if not 1 <= n <= k:
            raise ChunkrepoError(f"--read-data-subset {spec}: want n/k with 1 <= n <= k")
        return [p for p in pids if int.from_bytes(p[:4], "big") % k == n - 1]
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", spec)
    if m:
        pct = float(m.group(1))
        if not 0 < pct <= 100:
            raise ChunkrepoError(f"--read-data-subset {spec}: want a percentage above 0 and at most 100")
        want = min(len(pids), math.ceil(len(pids) * pct / 100))
        return sorted(random.sample(pids, want))
    raise ChunkrepoError(f"--read-data-subset {spec}: want n/k (e.g. 1/10) or a percentage (e.g. 10%)")


def check_repository(repo, read_data: bool = False, progress=None,
                     read_data_subset: Optional[str] = None) -> CheckReport:
    """Verify repo (a repository.Repository); damage is reported in the result, not raised.

    read_data_subset ('n/k' or 'P%') reads only those packs (implies read_data)."""
    t0 = time.monotonic()
    select_packs([], read_data_subset)          # bad input: one clear error before any work
    read_data = read_data or bool(read_data_subset)
    rep = CheckReport(read_data=read_data)
    chk = _Checker(repo, rep, read_data, progress)
    chk.subset = read_data_subset
    try:
        chk.run()
    except (ChunkrepoError, OSError) as e:
        chk._summarize()
        rep.errors.append(f"check stopped early: {e}")
        chk.found.complete = False
    rep.ok = not rep.errors
    rep.elapsed = time.monotonic() - t0
    return rep


__all__ = ["CheckReport", "Findings", "check_repository"]
