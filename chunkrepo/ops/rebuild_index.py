"""rebuild-index: recreate the LMDB index from the store alone.

The store is the truth (docs/format.md): pack trailers list every blob, tree
blobs hold the directory records, backups/ holds the backup records.  A write
session's recovery already adopts packs and backup records the index lacks, so
rebuilding is: set the old index aside, open an empty one, let recovery adopt
everything (reference counts, the garbage set and pack accounting follow from
the same code as always), and drop the old index once that succeeded.

Where the store is damaged the old index, if it can be read, is the fallback:
the blobs it places in a pack whose trailer is damaged are adopted if they
verify, and a damaged backup record file is replaced by its copy there if that
hashes to the backup's id.  A damaged record without a good copy stops the
rebuild (skipping it would leave its data to prune); a rebuild that fails puts
the old index back.  A kill part-way leaves an index that the next write
session completes the same way (and the old one as index.old-PID).
"""

import os
import shutil
import time
from dataclasses import dataclass, field

from ..errors import NotARepository
from ..index import Index
from ..repository.lock import WriterLock
from ..repository.packs import KIND_DATA, KIND_TREE, PackEntry
from ..storage.open import is_url, local_path


@dataclass
class RebuildResult:
    packs: int = 0
    backups: int = 0
    damaged_packs: list = field(default_factory=list)
    salvaged_blobs: dict = field(default_factory=dict)      # damaged pack -> blobs that verified
    unregistered_backups: list = field(default_factory=list)
    records_from_index: list = field(default_factory=list)  # damaged record files the old index had
    elapsed: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def rebuild_index(path: str, open_repository) -> RebuildResult:
    """open_repository(path, sync_index=...) -> an open repository.Repository.

    A remote repository's index is a local cache (repository.index_cache): it is
    emptied and refilled from the store, without the store's writer lock."""
    t0 = time.monotonic()
    if is_url(path):
        repo = open_repository(path, sync_index=False)
        try:
            got = repo.cache.rebuild(repo)
        finally:
            repo.close()
        return _result(got, t0)
    path = local_path(path)
    index = os.path.join(path, "index")
    if not os.path.exists(os.path.join(path, "config")):
        raise NotARepository(f"no repository at {path}")
    old = os.path.join(path, f"index.old-{os.getpid()}")
    lock = os.path.join(path, "lock")
    with WriterLock(lock):     # no writer may run while the index moves
        if os.path.isdir(index):
            os.rename(index, old)
    fallback = OldIndex.open(old)
    try:
        repo = open_repository(path, sync_index=False)
        try:
            with repo.write_session(fallback) as session:
                got = session.recovered
        finally:
            repo.close()
    except BaseException:
        if fallback is not None:
            fallback.close()
        with WriterLock(lock):   # a failed rebuild leaves the index it found, not a partial one
            shutil.rmtree(index, ignore_errors=True)
            if os.path.isdir(old):
                os.rename(old, index)
        raise
    if fallback is not None:
        fallback.close()
    shutil.rmtree(old, ignore_errors=True)
    return _result(got, t0)


class OldIndex:
    """The index being replaced, as the fallback of the rebuild's recovery (WriteSession)."""

    def __init__(self, index: Index):
        self._index = index

    @classmethod
    def open(cls, path: str):
        """None if there is none, or it cannot be opened (the store alone is used then)."""
        if not os.path.exists(os.path.join(path, "data.mdb")):
            return None
        try:
            return cls(Index(path, readonly=True))
        except Exception:         # ours (StorageError, IntegrityError) or LMDB's own, on damage
            return None

    def pack_entries(self, pack_ids) -> dict:
        """{pack id: [PackEntry]}: where the old index placed blobs in those packs."""
        want = set(pack_ids)
        out: dict = {}
        try:
            with self._index.read() as v:
                for kind, it in ((KIND_DATA, v.all_chunks()), (KIND_TREE, v.all_trees())):
                    for bid, e in it:
                        if e.pack in want and not e.lost:
                            out.setdefault(e.pack, []).append(
                                PackEntry(kind, bytes(bid), e.offset, e.length, e.raw_length))
        except Exception:         # damaged pages: what was read so far (all of it is verified)
            pass
        return out

    def backup_record(self, bid: str):
        try:
            with self._index.read() as v:
                raw = v.backup(bid)
        except Exception:
            return None
        return None if raw is None else bytes(raw)

    def close(self) -> None:
        self._index.close()


def _result(got: dict, t0: float) -> RebuildResult:
    return RebuildResult(got["packs"], got["backups"], got["damaged_packs"], got["salvaged_blobs"],
                         got["unregistered_backups"], got["records_from_index"], time.monotonic() - t0)
