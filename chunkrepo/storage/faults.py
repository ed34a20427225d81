"""A storage wrapper that injects faults: full disk, I/O errors, short writes,
failed renames.  For tests of what a backup or a prune leaves behind when the
storage fails under it; features are wrappers around a storage.

    Repo(path, wrap_storage=lambda s: FaultyStorage(s, [Fault("write", "packs/", after=3)]))

A CLI run in a subprocess takes its faults from the environment (read only by
chunkrepo.api.Repo, through from_env):

    CHUNKREPO_FAULTS="write:packs/:2:ENOSPC;get:packs/:0:EIO:1"    op:prefix[:after[:kind[:times]]]
"""

import errno
import os
import threading
from dataclasses import dataclass, field
from typing import List, Optional

from ..errors import StorageError
from .local import _storage_error

# what each kind of fault raises
_ERRNO = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO, "late": errno.EIO}


@dataclass
class Fault:
    op: str                 # "write" | "commit" | "put" | "get" | "delete" | "create" | "size" | "list"
    prefix: str = ""        # object names it applies to
    after: int = 0          # matching calls that succeed before the fault
    kind: str = "ENOSPC"    # "ENOSPC" | "EIO" | "short" (half written, then ENOSPC) |
                            # "late" (commit only: the object is in place, then EIO)
    times: int = 1 << 30    # how many times it fires (then the storage heals)
    hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def fires(self, op: str, name: str) -> bool:
        if op != self.op or not name.startswith(self.prefix):
            return False
        with self._lock:          # backups write packs from several threads
            self.hits += 1
            return self.after < self.hits <= self.after + self.times

    @property
    def fired(self) -> int:
        return max(0, min(self.hits - self.after, self.times))

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
        if f is not None and f.kind == "late":   # renamed, then fsync of the folder fails
            self._inner.commit()
            raise f.error(f"writing {self._name}")
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
        f = self._match("create", name)
        if f is not None:
            raise f.error(f"creating {name}")
        return _FaultyWriter(self._inner.create(name), self, name)

    def size(self, name: str) -> int:
        f = self._match("size", name)
        if f is not None:
            raise f.error(f"examining {name}")
        return self._inner.size(name)

    def list(self, prefix: str):
        f = self._match("list", prefix)
        if f is not None:
            raise f.error(f"listing {prefix}")
        return self._inner.list(prefix)

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

    def __getattr__(self, attr):      # exists, close, remove_stale_temporaries, ...
        return getattr(self._inner, attr)


FAULTS_ENV = "CHUNKREPO_FAULTS"
_OPS = ("write", "commit", "put", "get", "delete", "create", "size", "list")
_KINDS = ("ENOSPC", "EIO", "short", "late")


def parse_faults(spec: str) -> List[Fault]:
    """'op:prefix[:after[:kind[:times]]]' separated by ';' -> Faults (ValueError if malformed)."""
    faults = []
    for item in filter(None, (x.strip() for x in spec.split(";"))):
        parts = item.split(":")
        if not 2 <= len(parts) <= 5 or parts[0] not in _OPS:
            raise ValueError(f"bad fault {item!r}: op:prefix[:after[:kind[:times]]] with op one of {_OPS}")
        kw = {"op": parts[0], "prefix": parts[1]}
        if len(parts) > 2:
            kw["after"] = int(parts[2])
        if len(parts) > 3:
            if parts[3] not in _KINDS:
                raise ValueError(f"bad fault {item!r}: kind must be one of {_KINDS}")
            kw["kind"] = parts[3]
        if len(parts) > 4:
            kw["times"] = int(parts[4])
        faults.append(Fault(**kw))
    return faults


def from_env() -> Optional[callable]:
    """A wrap_storage function for the faults in $CHUNKREPO_FAULTS, or None if it is unset."""
    spec = os.environ.get(FAULTS_ENV)
    if not spec:
        return None
    try:
        faults = parse_faults(spec)
    except ValueError as e:
        raise StorageError(f"{FAULTS_ENV}: {e}") from None
    return lambda storage: FaultyStorage(storage, faults)
