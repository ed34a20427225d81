"""The chunk ids a write session has claimed, shared with its reader processes.

A backup that reads a lot hands its files to reader processes (ops/backup/reader_procs):
each stores what it reads into packs of its own, and no two may store the same chunk.
The claims live in a small LMDB environment in a temporary directory that the session
and every reader open: a claim is a put that refuses an existing key, in one short write
transaction per batch of ids (LMDB serialises writers across processes).  A claimed id is
held until its pack is committed to the index, then released: a claimer looks a newly
claimed id up in the index (a snapshot taken after the claim) before it stores it, so
the environment holds only what is being stored (a few MiB whatever the host's size:
its pages count in every reader's resident set).  The directory goes with the session.
"""

import os
import shutil
import tempfile
from typing import List

import lmdb

_PREFIX = "chunkrepo-claims-"
_MAP_SIZE = 1 << 36      # address space only: ~70 bytes of pages per claimed id


class SharedClaims:
    def __init__(self, path: str):
        self.path = path
        self.env = lmdb.open(path, map_size=_MAP_SIZE, subdir=True, sync=False, metasync=False,
                             readahead=False, max_dbs=0)

    @classmethod
    def create(cls) -> "SharedClaims":
        _remove_stale()
        return cls(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))

    def claim(self, ids: List[bytes]) -> List[bool]:
        """Whether each id is claimed by this call (an id twice in ids: the first time)."""
        if not ids:
            return []
        with self.env.begin(write=True) as txn:
            put = txn.put
            return [put(i, b"", overwrite=False) for i in ids]

    def release(self, ids: List[bytes]) -> None:
        """Forget ids whose blobs are in the index now."""
        if not ids:
            return
        with self.env.begin(write=True) as txn:
            delete = txn.delete
            for i in ids:
                delete(i)

    def close(self) -> None:
        self.env.close()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)


def _remove_stale() -> None:
    """Claims directories of sessions whose process is gone (killed)."""
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(_PREFIX):
            continue
        try:
            pid = int(name[len(_PREFIX):].split("-", 1)[0])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        except OSError:
            pass      # alive, another user's
