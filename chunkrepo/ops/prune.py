"""prune: give back the space of blobs nothing references.

The index keeps the `garbage` set (pack id + blob id of every stored blob whose
reference count is 0, and of duplicate copies the index does not point to) and
per pack the dead bytes and blobs.  Prune walks the garbage set only, one pack
at a time (its keys start with the pack id), so it costs what it frees, never a
scan of the repository, and its memory is one pack's live blobs plus the list
of packs it frees.

* A pack whose blobs are all dead is dropped.
* A pack whose dead bytes exceed `repack_threshold` of its size is rewritten:
  its live blobs (read, verified against their hash) are appended, still
  compressed, to new packs; a new pack is sealed durable before the index
  transaction that repoints the blobs to it, drops the dead blobs and the old
  pack's row, and records the old pack as pending deletion.
* A pending pack's file is deleted only once no LMDB reader older than the
  transaction that dropped it is active (the reader table lists the snapshot
  each active read transaction sees): a reader streaming from the old snapshot
  keeps its pack.  Packs still needed are left for the next prune.

Crash order: new packs durable -> index transaction -> old pack files deleted.
A kill before the index transaction leaves new packs the index does not list
(the next write session adopts them: all their blobs are duplicates, so they
are garbage and the next prune drops them); a kill after it leaves pending
packs that the next prune deletes.
"""

import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from ..codec import compression
from ..codec.hashing import hash_bytes
from ..errors import ChunkrepoError, IntegrityError, NotFound
from ..index import BlobEntry, PackInfo
from ..repository.crash_points import crash_point
from ..index.lmdb_index import COMMITTING_META, REGISTERING_META
from ..repository.packs import KIND_DATA, PackWriter, pack_id_from_name, pack_name, read_trailer

DEFAULT_REPACK_THRESHOLD = 0.05
_DELETE_BATCH = 256          # packs dropped per index transaction


@dataclass
class PruneReport:
    dry_run: bool = False
    garbage_blobs: int = 0          # entries in the garbage set when prune started
    packs_deleted: int = 0          # packs entirely dead, dropped
    packs_rewritten: int = 0        # packs whose live blobs were copied to new packs
    packs_written: int = 0          # new packs
    blobs_freed: int = 0            # index entries (chunks and directory records) removed
    blobs_moved: int = 0            # live blobs copied into new packs
    bytes_moved: int = 0
    bytes_freed: int = 0            # sizes of the dropped packs minus sizes of the new ones
    packs_kept_with_garbage: int = 0    # below the threshold: left as they are
    bytes_unused_kept: int = 0
    files_deleted: int = 0          # pack files deleted (this prune's and earlier ones')
    earlier_files_deleted: int = 0      # of those, files an earlier prune left for its readers
    earlier_bytes_freed: int = 0        # their sizes (not in bytes_freed: that prune counted them)
    packs_awaiting_deletion: int = 0    # readers may still use them: the next prune deletes them
    bytes_awaiting_deletion: int = 0
    temporaries_removed: int = 0        # temporary files of killed writers (the session's recovery)
    temporary_bytes_removed: int = 0
    not_counted: List[str] = field(default_factory=list)    # what a dry run cannot tell in advance
    errors: List[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def nothing_to_do(self) -> bool:
        return not (self.packs_deleted or self.packs_rewritten or self.files_deleted or self.errors
                    or self.temporaries_removed)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["nothing_to_do"] = self.nothing_to_do
        d["elapsed"] = round(self.elapsed, 3)
        return d


def _next_pack_key(pid: bytes) -> Optional[bytes]:
    n = int.from_bytes(pid, "big") + 1
    return None if n >> (8 * len(pid)) else n.to_bytes(len(pid), "big")


def _packs_with_garbage(index):
    """(pack id, PackInfo or None) of every pack holding garbage, skipping pack to pack."""
    start = b""
    while start is not None:
        with index.read() as v:
            it = v.garbage(start)
            g = next(it, None)
            it.close()            # its cursor, before the transaction ends
            if g is None:
                return
            info = v.pack_info(g.pack)
        yield g.pack, info
        start = _next_pack_key(g.pack)


class _Pruner:
    def __init__(self, repo, threshold: float, dry_run: bool):
        self.repo = repo
        self.index = repo.index
        self.storage = repo.storage
        self.pack_size = repo.config.pack_size
        self.threshold = threshold
        self.rep = PruneReport(dry_run=dry_run)
        self._writer: Optional[PackWriter] = None
        self._batch: list = []        # old packs whose live blobs are in self._writer

    # -- planning --------------------------------------------------------------
    def plan(self):
        with self.index.read() as v:
            self.rep.garbage_blobs = v.garbage_count()
            committing = v.meta(COMMITTING_META)
        delete, repack = [], []
        for pid, info in _packs_with_garbage(self.index):
            if info is None and self.rep.dry_run and pid == committing:
                continue       # a killed writer's pack committed in part: recovery finishes it first
            if info is None:
                self.rep.errors.append(f"pack {pid.hex()}: garbage entries for a pack the index does not "
                                       f"list; left alone (run check)")
                continue
            if info.dead_blobs >= info.count:
                delete.append(pid)
            elif info.size and info.dead_bytes > self.threshold * info.size:
                repack.append(pid)
            else:
                self.rep.packs_kept_with_garbage += 1
                self.rep.bytes_unused_kept += info.dead_bytes
        return delete, repack

    def estimate(self, delete, repack) -> None:
        with self.index.read() as v:
            for pid in delete:
                info = v.pack_info(pid)
                self.rep.packs_deleted += 1
                self.rep.blobs_freed += sum(1 for g in v.garbage_of_pack(pid) if _indexed_here(v, g))
                self.rep.bytes_freed += info.size
            for pid in repack:
                info = v.pack_info(pid)
                self.rep.packs_rewritten += 1
                self.rep.blobs_freed += sum(1 for g in v.garbage_of_pack(pid) if _indexed_here(v, g))
                self.rep.blobs_moved += info.count - info.dead_blobs
                self.rep.bytes_moved += info.size - info.dead_bytes
                self.rep.bytes_freed += info.dead_bytes
            pending = list(v.pending())
        oldest = self.index.oldest_reader()      # outside the view: this one is no reader then
        for _pid, txnid, size in pending:
            if oldest is not None and oldest < txnid:
                self.rep.packs_awaiting_deletion += 1
                self.rep.bytes_awaiting_deletion += size
            else:
                self.rep.files_deleted += 1
                self.rep.earlier_files_deleted += 1
                self.rep.earlier_bytes_freed += size

    def estimate_leftovers(self) -> None:
        """What the write session's recovery adopts before a real prune: the sealed packs a
        killed or failed writer left unindexed (their blobs are garbage then, unless a
        backup record waiting for registration or a lost blob needs them) and its
        temporary files (dry run: without the lock no recovery runs)."""
        count_temporaries(self.rep, stale_temporaries(self.repo))
        with self.index.read() as v:
            unknown = [n for n in self.storage.list("packs")
                       if not v.has_pack(pack_id_from_name(n)) and not v.is_pending(pack_id_from_name(n))]
            if not unknown:
                return
            writer = self.repo.active_writer()
            if writer is not None:
                self.rep.not_counted.append(f"{len(unknown)} packs not in the index yet: a writer is running "
                                            f"({writer}), which may index and use them")
                return
            waiting = [n for n in self.storage.list("backups") if v.backup(n.rsplit("/", 1)[1]) is None]
            if waiting or v.meta(REGISTERING_META) is not None:
                self.rep.not_counted.append(f"{len(unknown)} packs an interrupted writer left: backups it "
                                            f"stored wait for registration, which may use them (prune "
                                            f"registers them first)")
                return
            seen, odd = set(), []
            for name in unknown:
                pid = pack_id_from_name(name)
                try:
                    entries = read_trailer(self.storage, name)
                    size = self.storage.size(name)
                except (ChunkrepoError, OSError):
                    odd.append(name)     # recovery salvages what verifies: not foreseeable here
                    continue
                indexed = [v.blob(te.kind, te.id) for te in entries]
                if any(e is not None and e.lost for e in indexed):
                    odd.append(name)     # stored again: the backups that lost it need it
                    continue
                self.rep.garbage_blobs += sum(1 for e in indexed if e is None or e.pack != pid)
                self.rep.packs_deleted += 1
                self.rep.bytes_freed += size
                # an index entry is dropped for each blob adoption indexes in this pack
                self.rep.blobs_freed += sum(1 for te, e in zip(entries, indexed)
                                            if (e is None and (te.kind, te.id) not in seen)
                                            or (e is not None and e.pack == pid))
                seen.update((te.kind, te.id) for te in entries)
        if odd:
            self.rep.not_counted.append(f"{len(odd)} packs an interrupted writer left, with a damaged trailer "
                                        f"or blobs backups lost (prune adopts them first)")

    # -- dropping whole packs ------------------------------------------------------
    def drop_dead_packs(self, delete, repack) -> None:
        for i in range(0, len(delete), _DELETE_BATCH):
            batch = delete[i:i + _DELETE_BATCH]
            with self.index.write() as w:
                for pid in batch:
                    info = w.pack_info(pid)
                    if info is None:
                        continue
                    if sum(1 for _ in w.garbage_of_pack(pid)) < info.count:
                        repack.append(pid)         # the accounting says dead, the rows do not: look closer
                        continue
                    self.rep.blobs_freed += w.drop_pack_garbage(pid)
                    w.delete_pack(pid)
                    w.put_pending(pid, info.size)
                    self.rep.packs_deleted += 1
                    self.rep.bytes_freed += info.size
            crash_point("prune-index-committed")

    # -- rewriting packs -----------------------------------------------------------
    def repack(self, repack) -> None:
        for pid in repack:
            try:
                blobs = self._live_blobs(pid)
            except (ChunkrepoError, OSError) as e:
                self.rep.errors.append(f"pack {pid.hex()}: {e}; pack kept, its live blobs untouched")
                continue
            if self._writer is None and blobs:
                self._writer = PackWriter(self.storage)
            for te, stored in blobs:
                self._writer.add(te.kind, te.id, stored, te.raw_length)
                self.rep.blobs_moved += 1
                self.rep.bytes_moved += len(stored)
            self._batch.append(pid)
            if self._writer is not None and self._writer.size >= self.pack_size:
                self._commit_batch()
        if self._batch:
            self._commit_batch()

    def _live_blobs(self, pid: bytes) -> list:
        """The blobs of pack pid the index points to and something references, verified."""
        name = pack_name(pid)
        trailer = read_trailer(self.storage, name)
        live = []
        with self.index.read() as v:
            for te in trailer:
                if v.is_garbage(pid, te.id):
                    continue
                e = v.blob(te.kind, te.id)
                if e is None or e.pack != pid or e.offset != te.offset:
                    continue           # not the copy the index uses
                live.append(te)
        out = []
        for te in live:
            stored = self.storage.get(name, te.offset, te.length)
            try:
                data = compression.decompress(stored, te.raw_length)
            except Exception as e:
                raise IntegrityError(f"blob {te.id.hex()} cannot be decoded ({e})") from None
            if hash_bytes(data) != te.id:
                raise IntegrityError(f"blob {te.id.hex()} fails its hash")
            out.append((te, stored))
        return out

    def _commit_batch(self) -> None:
        new = None
        w8 = self._writer
        self._writer = None
        if w8 is not None:
            if w8.entries:
                new = (w8.pack_id, w8.seal(), w8.size)
                self.rep.packs_written += 1
            else:
                w8.abort()
        crash_point("prune-packs-sealed")
        batch, self._batch = self._batch, []
        with self.index.write() as w:
            if new is not None:
                npid, entries, size = new
                w.put_pack(npid, PackInfo(size, len(entries)))
                for te in entries:
                    old = w.blob(te.kind, te.id)
                    rc = old.refcount if old is not None else 0
                    entry = BlobEntry(npid, te.offset, te.length, te.raw_length, rc)
                    if te.kind == KIND_DATA:
                        w.put_chunk(te.id, entry)
                    else:
                        w.put_tree(te.id, entry)
                self.rep.bytes_freed -= size
            for pid in batch:
                info = w.pack_info(pid)
                self.rep.blobs_freed += w.drop_pack_garbage(pid)
                w.delete_pack(pid)
                w.put_pending(pid, info.size if info else 0)
                self.rep.packs_rewritten += 1
                self.rep.bytes_freed += info.size if info else 0
        crash_point("prune-index-committed")

    # -- deleting files --------------------------------------------------------------
    def delete_pending(self, earlier: set) -> None:
        """earlier: the packs pending when this prune began (an earlier prune's)."""
        deleted, waiting = delete_pending_packs(self.repo)
        self.rep.files_deleted += len(deleted)
        for pid, size in deleted:
            if pid in earlier:
                self.rep.earlier_files_deleted += 1
                self.rep.earlier_bytes_freed += size
        self.rep.packs_awaiting_deletion = len(waiting)
        self.rep.bytes_awaiting_deletion = sum(size for _, size in waiting)


def delete_pending_packs(repo) -> tuple:
    """Delete the files of packs pending deletion that no reader can still need;
    returns ([(pack id, size)] deleted, [(pack id, size)] still waiting for their
    readers).  Inside a write session."""
    with repo.index.read() as v:
        pending = list(v.pending())
    if not pending:
        return [], []
    repo.check_lock()     # another writer may need these packs if it took the lock over
    oldest = repo.index.oldest_reader()
    done = []
    waiting = []
    for pid, txnid, size in pending:
        if oldest is not None and oldest < txnid:
            waiting.append((pid, size))     # a reader may still read it from its snapshot
            continue
        crash_point("prune-before-delete")
        try:
            repo.storage.delete(pack_name(pid))
        except NotFound:
            pass
        done.append((pid, size))
    if done:
        with repo.index.write() as w:
            for pid, _ in done:
                w.delete_pending(pid)
    return done, waiting


def stale_temporaries(repo) -> list:
    """[(path, size)] of the temporary files killed writers left (a write session's
    recovery removes them)."""
    return [t for prefix in ("packs", "backups") for t in repo.storage.stale_temporaries(prefix)]


def _indexed_here(v, g) -> bool:
    e = v.blob(g.kind, g.id)
    return e is not None and e.pack == g.pack


def run_prune(repo, threshold: float = DEFAULT_REPACK_THRESHOLD, dry_run: bool = False) -> PruneReport:
    """Prune inside a write session the caller holds (repo: repository.Repository)."""
    t0 = time.monotonic()
    if not 0 <= threshold < 1:
        raise ChunkrepoError(f"repack threshold must be between 0% and 100% (got {threshold * 100:g}%)")
    p = _Pruner(repo, threshold, dry_run)
    delete, repack = p.plan()
    if dry_run:
        p.estimate(delete, repack)
        p.estimate_leftovers()
    else:
        with repo.index.read() as v:
            earlier = {pid for pid, _, _ in v.pending()}
        p.delete_pending(earlier)            # what earlier prunes left to their readers
        p.drop_dead_packs(delete, repack)
        p.repack(repack)
        p.delete_pending(earlier)
    p.rep.elapsed = time.monotonic() - t0
    return p.rep


def prune_repository(repo, threshold: float = DEFAULT_REPACK_THRESHOLD, dry_run: bool = False) -> PruneReport:
    """Prune repo (a repository.Repository), taking the writer lock unless dry_run."""
    if dry_run:
        return run_prune(repo, threshold, dry_run=True)
    temporaries = stale_temporaries(repo)     # what the session's recovery removes
    with repo.write_session():
        rep = run_prune(repo, threshold)
    count_temporaries(rep, temporaries)
    return rep


def count_temporaries(rep: PruneReport, temporaries: list) -> None:
    rep.temporaries_removed = len(temporaries)
    rep.temporary_bytes_removed = sum(size for _, size in temporaries)


__all__ = ["DEFAULT_REPACK_THRESHOLD", "PruneReport", "count_temporaries", "delete_pending_packs",
           "prune_repository", "run_prune", "stale_temporaries"]
