"""copy: backups from one repository into another, sending only what the target lacks.

The source is read without a lock; the target is written through its normal
WriteSession (its writer lock, write order packs -> index -> backup record),
so a killed copy is as harmless as a killed backup: the next session adopts
the sealed packs, and a rerun finds their blobs in the target's index and does
not send them again.

What to send is decided by the target's index alone, never by a request per
blob: a directory record the target holds with a reference count >= 1 belongs
to a committed backup, so everything below it is there and it is not descended.
A record held with count 0 (committed by a killed copy or backup, or left by a
prune that kept its pack) proves nothing about its children: it is descended
and only the blobs the index lacks are sent.  Records are added in post-order
by one writer thread, so a record reaches a pack after every blob below it.

Backups keep their id and record: the target gets the very same backup.
Chunks are content-addressed, so they stay valid whatever the target's
chunker parameters (later backups into the target then cut differently and
deduplicate less against what was copied).
"""

import collections
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

from ..errors import ChunkrepoError, IntegrityError
from ..model import BackupRecord, Tree

_READ_AHEAD = 16     # chunks read, decompressed and verified ahead of the writer
_READERS = 4         # mostly waiting on the source storage (a ranged read per chunk)


@dataclass
class CopyResult:
    dry_run: bool = False
    backups_copied: List[str] = field(default_factory=list)
    backups_present: List[str] = field(default_factory=list)   # already in the target: skipped
    chunks_sent: int = 0
    bytes_sent: int = 0          # raw bytes of the chunks sent
    chunks_present: int = 0      # chunk references the target already had
    trees_sent: int = 0
    trees_present: int = 0       # directory records the target already had (committed subtrees)
    elapsed: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def select_backups(source, refs: Sequence[str]) -> List[BackupRecord]:
    """The source's backups named by refs (id, unique prefix, 'latest'), or all of them."""
    if refs:
        recs = {r.id: r for r in (source.resolve_backup(ref) for ref in refs)}
        return sorted(recs.values(), key=lambda r: (r.start_ns, r.id))
    return source.list_backups()


class _Copier:
    """Walks one source tree and sends what the target lacks (post-order, iterative)."""

    def __init__(self, source, target, session, res: CopyResult, progress, pool):
        self.source = source
        self.target = target
        self.session = session          # None on a dry run
        self.res = res
        self.progress = progress
        self.pool = pool                # reads source chunks ahead of the (single) writer
        self.done: set = set()          # records whose whole subtree is in the target (or planned)
        self.chunks_seen: set = set()   # dry run: chunks counted as sent already
        self._last = 0.0

    def tree(self, root: bytes) -> None:
        stack = [(root, None)]
        while stack:
            tid, tree = stack.pop()
            if tree is None:
                if tid in self.done:
                    continue
                if self._committed_in_target(tid):
                    self.done.add(tid)
                    self.res.trees_present += 1
                    continue
                tree = Tree.decode(self.source.tree_bytes(tid))
                stack.append((tid, tree))        # revisited after its children
                stack.extend((n.subtree, None) for n in reversed(tree.entries) if n.subtree is not None)
                continue
            self._send_chunks(tree)
            self._send_tree(tid, tree)
            self.done.add(tid)
            if self.session is not None:
                self.session.checkpoint()
            self.report()

    def _committed_in_target(self, tid: bytes) -> bool:
        with self.target.index.read() as v:
            e = v.tree(tid)
        return e is not None and e.refcount >= 1 and not e.lost     # a lost record must be sent again

    def _send_chunks(self, tree: Tree) -> None:
        wanted = []
        for node in tree.entries:
            for cid in node.chunk_ids():
                if self._claim(cid):
                    wanted.append(cid)
                else:
                    self.res.chunks_present += 1
        if self.session is None:
            with self.source.index.read() as src:
                for cid in wanted:
                    entry = src.chunk(cid)
                    if entry is None:
                        raise IntegrityError(f"chunk {cid.hex()} is not in the source's index")
                    self._sent(entry.raw_length)
            return
        for cid, data in self._read_ahead(wanted):
            self.session.store_chunk(cid, data)
            self._sent(len(data))

    def _read_ahead(self, cids):
        """(id, verified bytes) in order; the pool reads and decompresses up to _READ_AHEAD ahead."""
        window: "collections.deque" = collections.deque()
        for cid in cids:
            window.append((cid, self.pool.submit(self.source.read_chunk, cid)))
            if len(window) >= _READ_AHEAD:
                c, fut = window.popleft()
                yield c, fut.result()
        while window:
            c, fut = window.popleft()
            yield c, fut.result()

    def _sent(self, size: int) -> None:
        self.res.chunks_sent += 1
        self.res.bytes_sent += size
        self.report()

    def _claim(self, cid: bytes) -> bool:
        if self.session is not None:
            return self.session.claim_chunk(cid)
        if cid in self.chunks_seen or self.target.index.has_chunk(cid):
            return False
        self.chunks_seen.add(cid)
        return True

    def _send_tree(self, tid: bytes, tree: Tree) -> None:
        with self.target.index.read() as v:
            present = v.has_tree(tid)
        if present:
            self.res.trees_present += 1
            return
        self.res.trees_sent += 1
        if self.session is not None and self.session.add_tree(tree) != tid:
            raise IntegrityError(f"directory record {tid.hex()} re-encodes to other bytes; not copied")

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is not None and (force or now - self._last > 0.2):
            self._last = now
            self.progress(self.res)


def copy_backups(source, target, refs: Sequence[str] = (), dry_run: bool = False,
                 progress: Optional[Callable] = None) -> CopyResult:
    """Copy backups (all of source's, or those refs name) that target lacks, by backup id."""
    t0 = time.monotonic()
    if source.path == target.path:
        raise ChunkrepoError("source and target are the same repository")
    res = CopyResult(dry_run=dry_run)
    recs = select_backups(source, refs)
    with concurrent.futures.ThreadPoolExecutor(_READERS, "chunkrepo-copy") as pool:
        if dry_run:
            _copy_all(_Copier(source, target, None, res, progress, pool), recs)
        else:
            with target.write_session() as session:
                _copy_all(_Copier(source, target, session, res, progress, pool), recs)
    res.elapsed = time.monotonic() - t0
    return res


def _copy_all(copier: _Copier, recs: List[BackupRecord]) -> None:
    target, session, res = copier.target, copier.session, copier.res
    for rec in recs:
        with target.index.read() as v:
            present = v.backup(rec.id) is not None
        if present:
            res.backups_present.append(rec.id)
            continue
        copier.tree(bytes.fromhex(rec.root))
        if session is not None:
            session.commit_backup(rec)
        res.backups_copied.append(rec.id)
        copier.report(force=True)


__all__ = ["CopyResult", "copy_backups", "select_backups"]
