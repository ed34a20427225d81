"""rebuild-index: recreate the LMDB index from the store alone.

The store is the truth (docs/format.md): pack trailers list every blob, tree
blobs hold the directory records, backups/ holds the backup records.  A write
session's recovery already adopts packs and backup records the index lacks, so
rebuilding is: under the writer lock, let recovery adopt everything into an
empty index beside the old one (reference counts, the garbage set and pack
accounting follow from the same code as always), then switch it in
(repository.index_dirs).  Readers use the old index, complete, until the
switch; a kill or a failure leaves it in place, and the next writer removes
what the rebuild left.

Where the store is damaged the old index, if it can be read, is the fallback:
the blobs it places in a pack whose trailer is damaged are adopted if they
verify, a damaged backup record file is replaced by its copy there if that
hashes to the backup's id, and the record file of a backup it lists that is
missing is written again from its copy likewise.  A damaged record without a
good copy stops the rebuild (skipping it would leave its data to prune).  An
index.old-PID that an earlier version's killed rebuild left is a further
fallback for the first two, and is removed once the rebuild is switched in.
"""

import os
import shutil
import time
from dataclasses import dataclass, field

from ..errors import NotARepository
from ..index import Index
from ..model import decode_record
from ..repository import index_dirs
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
    records_rewritten: list = field(default_factory=list)   # missing record files written from it
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
    if not os.path.exists(os.path.join(path, "config")):
        raise NotARepository(f"no repository at {path}")
    with WriterLock(os.path.join(path, "lock")) as held:   # no writer until the new index is in place
        index_dirs.finish_switch(path)
        index_dirs.remove_leftovers(path)
        legacy = index_dirs.leftovers(path, index_dirs.LEGACY)
        fallback = OldIndexes([OldIndex.open(p) for p in [os.path.join(path, index_dirs.INDEX)] + legacy])

        def fill(name: str) -> dict:
            with open_repository(path, sync_index=False, index_dir=name) as repo:
                return repo.recover_store(held, fallback)
        try:
            got, ready = index_dirs.build(path, fill)
        finally:
            fallback.close()
        index_dirs.switch(path, ready)
        for old in legacy:      # what they knew that verified is in the new index
            shutil.rmtree(old, ignore_errors=True)
    return _result(got, t0)


class OldIndexes:
    """The fallback of the rebuild's recovery (WriteSession): the index being replaced
    (first; None if it could not be opened), then any legacy index.old-PID."""

    def __init__(self, indexes: list):
        self._current = indexes[0] if indexes else None
        self._all = [ix for ix in indexes if ix is not None]

    def pack_entries(self, pack_ids) -> dict:
        out: dict = {}
        for ix in self._all:
            for pid, entries in ix.pack_entries(pack_ids).items():
                out.setdefault(pid, []).extend(entries)
        return out

    def backup_record(self, bid: str):
        """The first copy that verifies (else None)."""
        for ix in self._all:
            raw = ix.backup_record(bid)
            try:
                decode_record(raw or b"", bid)
            except ValueError:
                continue
            return raw
        return None

    def backup_ids(self) -> list:
        """The backups the index being replaced lists (a legacy one may be older: one
        forgotten since would come back)."""
        return [] if self._current is None else self._current.backup_ids()

    def close(self) -> None:
        for ix in self._all:
            ix.close()


class OldIndex:
    """One old index, read as a fallback."""

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

    def backup_ids(self) -> list:
        out = []
        try:
            with self._index.read() as v:
                for bid, _ in v.backups():
                    out.append(bid)
        except Exception:         # damaged pages (or a key that is no text): what was read so far
            pass
        return out

    def close(self) -> None:
        self._index.close()


def _result(got: dict, t0: float) -> RebuildResult:
    return RebuildResult(got["packs"], got["backups"], got["damaged_packs"], got["salvaged_blobs"],
                         got["unregistered_backups"], got["records_from_index"], got["records_rewritten"],
                         time.monotonic() - t0)
