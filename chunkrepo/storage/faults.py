"""A storage wrapper that injects faults: full disk, I/O errors, short writes,
failed renames.  For tests of what a backup or a prune leaves behind when the
storage fails under it; features are wrappers around a storage.

    Repo(path, wrap_storage=lambda s: FaultyStorage(s, [Fault("write", "packs/", after=3)]))
"""

import errno
import os
from dataclasses import dataclass

from ..errors import StorageError
from .local import _storage_error

# what each kind of fault raises
_ERRNO = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}


@dataclass
class Fault:
    op: str                 # "write" | "commit" | "put" | "get" | "delete"
    prefix: str = ""        # object names it applies to
    after: int = 0          # matching calls that succeed before the fault
    kind: str = "ENOSPC"    # "ENOSPC" | "EIO" | "short" (half written, then ENOSPC)
    times: int = 1 << 30    # how many times it fires (then the storage heals)
    hits: int = 0

    def fires(self, op: str, name: str) -> bool:
        if op != self.op or not name.startswith(self.prefix):
            return False
        self.hits += 1
        return self.after < self.hits <= self.after + self.times

    def error(self, what: str) -> StorageError:
        code = _ERRNO.get(self.kind, errno.ENOSPC)
        return _storage_error(OSError(code, os.strerror(code)), what)


class _FaultyWriter:
    def __init__(self, inner, storage: "FaultyStorage", name: str):
        self._inner, self._s, self._name = inner, storage, name

    def write(self, data) -> None:
        f = self._s._match("write", self._name)
        if f is not None:
            if f.kind == "short":
                self._inner.write(bytes(data)[:len(data) // 2])
            self._inner.abort()
            raise f.error(f"writing {self._name}")
        self._inner.write(data)

    def tell(self) -> int:
        return self._inner.tell()

    def commit(self) -> None:
        f = self._s._match("commit", self._name)
        if f is not None:       # the data is written, the rename that publishes it fails
            self._inner.abort()
            raise f.error(f"renaming {self._name} into place")
        self._inner.commit()

    def abort(self) -> None:
        self._inner.abort()


class FaultyStorage:
    """Passes everything to inner, except the operations a Fault matches."""

    def __init__(self, inner, faults):
        self._inner = inner
        self.faults = list(faults)

    def _match(self, op: str, name: str):
        for f in self.faults:
            if f.fires(op, name):
                return f
        return None

    def create(self, name: str):
        return _FaultyWriter(self._inner.create(name), self, name)

    def put(self, name: str, data: bytes) -> None:
        f = self._match("put", name)
        if f is not None:
            raise f.error(f"writing {name}")
        w = self.create(name)
        w.write(data)
        w.commit()

    def get(self, name: str, offset: int = 0, length=None) -> bytes:
        f = self._match("get", name)
        if f is not None:
            raise f.error(f"reading {name}")
        return self._inner.get(name, offset, length)

    def delete(self, name: str) -> None:
        f = self._match("delete", name)
        if f is not None:
            raise f.error(f"deleting {name}")
        self._inner.delete(name)

    def __getattr__(self, attr):      # size, exists, list, close, remove_stale_temporaries, ...
        return getattr(self._inner, attr)
