"""rebuild-index: recreate the LMDB index from the store alone.

The store is the truth (docs/format.md): pack trailers list every blob, tree
blobs hold the directory records, backups/ holds the backup records.  A write
session's recovery already adopts packs and backup records the index lacks, so
rebuilding is: set the old index aside, open an empty one, let recovery adopt
everything (reference counts, the garbage set and pack accounting follow from
the same code as always), and drop the old index once that succeeded.  A kill
part-way leaves an index that the next write session completes the same way.
"""

import os
import shutil
import time
from dataclasses import dataclass, field

from ..errors import NotARepository
from ..repository.lock import WriterLock
from ..storage.open import is_url, local_path


@dataclass
class RebuildResult:
    packs: int = 0
    backups: int = 0
    damaged_packs: list = field(default_factory=list)
    unregistered_backups: list = field(default_factory=list)
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
    with WriterLock(os.path.join(path, "lock")):     # no writer may run while the index moves
        if os.path.isdir(index):
            os.rename(index, old)
    repo = open_repository(path)
    try:
        with repo.write_session() as session:
            got = session.recovered
    finally:
        repo.close()
    shutil.rmtree(old, ignore_errors=True)
    return _result(got, t0)


def _result(got: dict, t0: float) -> RebuildResult:
    return RebuildResult(got["packs"], got["backups"], got["damaged_packs"],
                         got["unregistered_backups"], time.monotonic() - t0)
