"""check --repair: make a damaged repository consistent again, losing nothing more.

Under the writer lock (readers keep working), after the write session's recovery:

1. check (structure; every byte with read_data) finds what is wrong.  A backup's
   record file (backups/ID) that is missing or damaged is written again from the
   index's copy, if that hashes to the backup's id.
2. If the index disagrees with packs that are sound (entries in a pack the index
   does not list, entries that do not match a pack's trailer), repair stops and
   points to `chunkrepo rebuild-index`: the index, not the data, is wrong.
3. Each damaged pack (missing, truncated, unreadable, or holding a blob that fails
   its hash) is **salvaged**: the blobs backups still reference that read back
   verified (a directory record also from the index's cached copy) are copied,
   still compressed, into a new durable pack; one LMDB transaction repoints them,
   marks the others **lost** (kept with their reference counts, pointing nowhere:
   docs/format.md), drops the pack's unreferenced blobs and its record, and puts
   the old file in `pending` (deleted once no reader needs it).
4. A directory record whose cached copy is bad gets it back from its pack, or is lost.
5. Reference counts are rewritten from check's recount; a blob referenced but not
   in the index at all gets a lost entry; the garbage set and the packs' dead
   accounting are rebuilt if they still differ.
6. The backups that lost data are marked damaged (the `damaged` db, with their
   paths), replacing earlier marks.

A lost chunk is absent for dedup and for the backup's borrowing check, so the
next backup of an unchanged file reads it and stores it again; the entry then
points to the new copy with its count kept, and when no lost blob is left the
damaged marks go (WriteView).  Forgetting a damaged backup releases lost blobs
like any other (a lost blob reaching 0 is removed).
"""

from dataclasses import asdict, dataclass, field
from typing import Dict, List

from ..codec import compression, records
from ..codec.hashing import hash_bytes
from ..errors import NotFound, StorageError
from ..index import BlobEntry, PackInfo
from ..model import decode_record
from ..repository.crash_points import crash_point
from ..repository.packs import KIND_DATA, KIND_TREE, PackWriter, pack_name
from .check import CheckReport, check_repository
from .prune import delete_pending_packs

_MAX_MARKED_PATHS = 1000      # paths stored per damaged mark (the count is always stored)


@dataclass
class RepairReport:
    nothing_to_do: bool = False
    actions: List[str] = field(default_factory=list)
    packs_salvaged: int = 0         # damaged packs replaced by a new pack of their good blobs
    blobs_kept: int = 0             # blobs copied out of damaged packs (or re-stored from the cache)
    blobs_lost: int = 0             # blobs marked lost
    refcounts_fixed: int = 0
    records_rewritten: int = 0      # backup record files written again from the index's copy
    garbage_rebuilt: bool = False
    damaged: Dict[str, List[str]] = field(default_factory=dict)   # backups marked damaged -> paths
    remaining: List[str] = field(default_factory=list)   # errors a check still reports, beyond lost data
    rebuild_index: bool = False     # the index does not match the packs: rebuild it

    @property
    def unrepaired(self) -> bool:
        """Damage remains: errors repair could not fix, or backups that lost data."""
        return bool(self.remaining or self.damaged)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unrepaired"] = self.unrepaired
        return d


def repair_repository(repo, read_data: bool = False, progress=None, read_data_subset=None) -> CheckReport:
    """Check repo (a repository.Repository) and repair what can be; the report of
    what check found first carries the RepairReport in report.repair."""
    with repo.write_session():
        found = check_repository(repo, read_data, progress, read_data_subset)
        r = found.repair = RepairReport()
        if found.ok and not found.marked_damaged:
            r.nothing_to_do = True
            return found
        f = found.findings
        if not f.complete:
            r.remaining = ["check could not finish, so nothing was repaired"]
            return found
        _rewrite_records(repo, f, r)
        if f.mismatch:
            r.rebuild_index = True
            r.remaining = [f"the index does not match the packs ({', '.join(f.mismatch[:3])}"
                           f"{', ...' if len(f.mismatch) > 3 else ''}): run 'chunkrepo rebuild-index', "
                           f"then 'chunkrepo check --repair' again"]
            return found
        for pid in sorted(f.unreadable_packs):
            r.actions.append(f"pack {pid.hex()}: not repaired: it cannot be read (an I/O error may pass; "
                             f"run check --repair again when the storage reads)")
        for pid in sorted(f.damaged_packs - f.unreadable_packs):
            try:
                _salvage(repo, pid, f, r)
            except _Unreadable as e:
                r.actions.append(f"pack {pid.hex()}: not repaired: {e}")
        _fix_cached_records(repo, f, r)
        if r.packs_salvaged:
            delete_pending_packs(repo)
        mid = check_repository(repo).findings
        if not mid.recount_is_exact():
            # a record that cannot be read now may be readable later: lowering the counts
            # of what it references could let prune delete live data
            r.actions.append("reference counts and the garbage set left as they are: some directory "
                             "records cannot be read (run check --repair again when they can)")
            r.damaged = {bid: list(p) for bid, p in found.damaged.items()}
            r.remaining = list(found.errors)
            return found
        _fix_counts(repo, mid, r)
        now = check_repository(repo)
        if now.findings.garbage is not None:
            with repo.index.write() as w:
                w.reset_garbage(now.findings.garbage)
            r.garbage_rebuilt = True
            r.actions.append("rebuilt the garbage set and the packs' dead accounting")
            now = check_repository(repo)
        _mark_damaged(repo, now, r)
        r.remaining = list(now.errors) if now.findings.kinds - {"lost"} else []
    return found


class _Unreadable(Exception):
    pass


def _good_copy(repo, name: str, off: int, length: int, raw: int, bid: bytes, size=None):
    """(stored bytes, raw bytes) of a blob in a damaged pack of size bytes (None: missing),
    or None if it does not verify.

    An I/O error is not damage (it may pass): _Unreadable, and nothing is changed."""
    if size is None or off + length > size:
        return None           # the pack is gone, or ends before the blob does
    try:
        stored = repo.storage.get(name, off, length)
    except NotFound:
        return None
    except (StorageError, OSError) as e:
        raise _Unreadable(str(e)) from None
    if len(stored) != length:
        return None           # truncated
    try:
        data = compression.decompress(stored, raw)
    except Exception:         # damaged bytes (IntegrityError, or the decoder's own failure)
        return None
    return (stored, data) if hash_bytes(data) == bid else None


def _cached_record(v, tid: bytes):
    data = v.tree_data(tid)
    return data if data is not None and hash_bytes(data) == tid else None


def _salvage(repo, pid: bytes, f, r: RepairReport) -> None:
    name = pack_name(pid)
    with repo.index.read() as v:
        live = []
        for off, length, raw, bid, kind in sorted(f.by_pack.get(pid, [])):
            e = v.blob(kind, bid)
            if e is not None and e.pack == pid and e.refcount > 0:
                live.append((off, length, raw, bid, kind, _cached_record(v, bid) if kind == KIND_TREE else None))
    try:
        size = repo.storage.size(name)
    except NotFound:
        size = None
    except (StorageError, OSError) as e:
        raise _Unreadable(str(e)) from None
    writer, kept, lost = None, {}, []
    try:
        for off, length, raw, bid, kind, cached in live:
            writer = _copy_blob(repo, writer, name, (off, length, raw, bid, kind, size), cached, kept, lost)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    new = (writer.pack_id, writer.seal(), writer.size) if writer is not None else None
    crash_point("repair-pack-sealed")
    with repo.index.write() as w:
        if new is not None:
            npid, entries, nsize = new
            w.put_pack(npid, PackInfo(nsize, len(entries)))
            for te in entries:
                rc = w.blob(te.kind, te.id).refcount
                entry = BlobEntry(npid, te.offset, te.length, te.raw_length, rc)
                if te.kind == KIND_DATA:
                    w.put_chunk(te.id, entry)
                else:
                    w.put_tree(te.id, entry, kept[te.id])
        for kind, bid in lost:
            w.mark_lost(kind, bid)
        for off, length, raw, bid, kind in f.by_pack.get(pid, []):
            e = w.blob(kind, bid)
            if e is not None and e.pack == pid and e.refcount == 0:
                w.drop_blob(kind, bid)     # unreferenced: nothing to save
        w.drop_pack_garbage(pid)           # and the duplicate copies it held
        w.delete_pack(pid)
        if size is not None:
            w.put_pending(pid, size)       # the damaged file goes once no reader needs it
    crash_point("repair-pack-committed")
    r.packs_salvaged += 1
    r.blobs_kept += len(kept)
    r.blobs_lost += len(lost)
    r.actions.append(f"pack {pid.hex()}: {len(kept)} blobs kept in a new pack, {len(lost)} lost; "
                     f"the damaged pack is removed")


def _copy_blob(repo, writer, name, blob, cached, kept: dict, lost: list):
    off, length, raw, bid, kind, size = blob
    got = _good_copy(repo, name, off, length, raw, bid, size)
    if got is None and cached is not None:
        got = (compression.compress(cached, repo.config.compression_level), cached)
    if got is None:
        lost.append((kind, bid))
        return writer
    if writer is None:
        writer = PackWriter(repo.storage)
    writer.add(kind, bid, got[0], raw)
    kept[bid] = got[1] if kind == KIND_TREE else None
    return writer


def _fix_cached_records(repo, f, r: RepairReport) -> None:
    """Directory records in sound packs whose cached copy in the index is bad."""
    fixes, lost = {}, []
    with repo.index.read() as v:
        for tid in sorted(f.bad_trees):
            e = v.tree(tid)
            if e is None or e.lost or _cached_record(v, tid) is not None:
                continue
            try:
                name = pack_name(e.pack)
                got = _good_copy(repo, name, e.offset, e.length, e.raw_length, tid, repo.storage.size(name))
            except (_Unreadable, NotFound, StorageError, OSError):
                continue            # reported by check; maybe readable later
            if got is not None:
                fixes[tid] = (e, got[1])
            else:
                lost.append(tid)
    if not fixes and not lost:
        return
    with repo.index.write() as w:
        for tid, (e, data) in fixes.items():
            w.put_tree(tid, e, data)
        for tid in lost:
            w.mark_lost(KIND_TREE, tid)
    r.blobs_kept += len(fixes)
    r.blobs_lost += len(lost)
    r.actions.append(f"{len(fixes)} directory records' cached copies restored from their packs"
                     + (f", {len(lost)} lost" if lost else ""))


def _rewrite_records(repo, f, r: RepairReport) -> None:
    """Backup record files missing or damaged: written again from the index's copy,
    if that copy hashes to the backup's id."""
    if f.bad_records:
        repo.check_lock()
    for bid, raw in sorted(f.bad_records.items()):
        try:
            decode_record(raw, bid)
        except ValueError as e:
            r.actions.append(f"backup {bid}: record file not written again: the index's copy is {e}")
            continue
        repo.storage.put(f"backups/{bid}", bytes(raw))
        r.records_rewritten += 1
        r.actions.append(f"backup {bid}: record file backups/{bid} written again from the index")


def _fix_counts(repo, f, r: RepairReport) -> None:
    """Reference counts from the recount; referenced blobs the index lacks become lost entries."""
    if not f.refcounts and not f.missing:
        return
    with repo.index.write() as w:
        for (kind, bid), rc in f.refcounts.items():
            w.set_refcount("chunk" if kind == KIND_DATA else "tree", bid, rc)
        for bid, kind in f.missing.items():
            refs = f.chunk_refs if kind == KIND_DATA else f.tree_refs
            if w.blob(kind, bid) is None:     # a reference to an unknown blob makes it lost
                (w.add_chunk_ref if kind == KIND_DATA else w.add_tree_ref)(bid, refs[bid])
    r.refcounts_fixed += len(f.refcounts)
    r.blobs_lost += len(f.missing)
    if f.refcounts:
        r.actions.append(f"rewrote {len(f.refcounts)} reference counts from the recount")
    if f.missing:
        r.actions.append(f"{len(f.missing)} referenced blobs missing from the index are marked lost")


def _mark_damaged(repo, now: CheckReport, r: RepairReport) -> None:
    r.damaged = {bid: list(p) for bid, p in now.damaged.items()}
    if now.findings.unreadable_packs:
        return        # which backups lost data is unknown while packs cannot be read: marks kept as they are
    marks = {}
    for bid, paths in now.damaged.items():
        marks[bid] = records.encode_json({"paths": paths[:_MAX_MARKED_PATHS], "paths_count": len(paths)})
    with repo.index.write() as w:
        w.set_damaged(marks)
    old = set(now.marked_damaged)
    for bid in sorted(set(marks) - old):
        r.actions.append(f"backup {bid} marked damaged ({len(now.damaged[bid])} paths lost data)")
    for bid in sorted(old - set(marks)):
        r.actions.append(f"backup {bid} is whole again: damaged mark cleared")


__all__ = ["RepairReport", "repair_repository"]
