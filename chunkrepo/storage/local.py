"""A storage in a local directory: tmp file -> fsync -> rename -> fsync(dir).

Readers use pread on a small cache of open descriptors, so streaming many
chunks out of the same pack costs one syscall each and no reopen.
"""

import errno
import os
import threading
from collections import OrderedDict
from typing import Iterator, Optional

from ..direct_io import DirectIO
from ..errors import NotFound, StorageError
from ..process import pid_alive

_TMP_PREFIX = ".tmp-"


def _storage_error(e: OSError, what: str) -> StorageError:
    if e.errno == errno.ENOSPC:
        return StorageError(f"no space left on device while {what}")
    return StorageError(f"{what}: {e.strerror or e}")


def _read_error(e: OSError, name: str) -> StorageError:
    """An object that could not be read, named (a restore reports it under the path of the
    file it was restoring: without the name it reads like a problem of that file)."""
    return StorageError(f"object {name} cannot be read: {e.strerror or e}")


def fsync_dir(path: str) -> None:
    """What was renamed or created in path survives a power cut from here on."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalWriter:
    """Writes the object to a temporary file (whole blocks with O_DIRECT: direct_io),
    which commit() fsyncs and renames into place."""

    def __init__(self, storage: "LocalStorage", name: str):
        self._final = storage._path(name)
        d = os.path.dirname(self._final)
        storage._makedirs(d)
        self._dir = d
        self._tmp = os.path.join(d, f"{_TMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")
        self._name = name
        try:
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise _storage_error(e, f"creating {name}") from None
        self._out = storage._direct.writer(self._fd)

    def write(self, data) -> None:
        try:
            self._out.write(data)
        except OSError as e:
            self.abort()
            raise _storage_error(e, f"writing {self._name}") from None

    def tell(self) -> int:
        return self._out.size

    def commit(self) -> None:
        try:
            self._out.finish()
            os.fsync(self._fd)
            self._close()
            os.rename(self._tmp, self._final)
            fsync_dir(self._dir)
        except OSError as e:
            self.abort()
            raise _storage_error(e, f"writing {self._name}") from None

    def _close(self) -> None:
        self._out.abort()
        if self._fd != -1:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def abort(self) -> None:
        self._close()
        try:
            os.unlink(self._tmp)
        except OSError:
            pass


class LocalStorage:
    """Objects as files below root."""

    def __init__(self, root: str, max_open: int = 64):
        self.root = os.path.abspath(root)
        self._fds: "OrderedDict[str, _OpenFile]" = OrderedDict()
        self._fd_lock = threading.Lock()
        self._max_open = max_open
        self._made_dirs: set = set()
        self._direct = DirectIO()        # pack writes skip the page cache

    def _path(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad object name {name!r}")
        return os.path.join(self.root, name)

    def _makedirs(self, d: str) -> None:
        if d not in self._made_dirs:
            os.makedirs(d, exist_ok=True)
            self._made_dirs.add(d)

    def create(self, name: str) -> _LocalWriter:
        return _LocalWriter(self, name)

    def put(self, name: str, data: bytes) -> None:
        w = self.create(name)
        w.write(data)
        w.commit()

    def _acquire(self, name: str) -> "_OpenFile":
        """The cached descriptor of name, held for one read: an eviction meanwhile
        (another thread opening the 65th object) closes it only once it is released,
        so its number is never reused under a read in progress."""
        with self._fd_lock:
            f = self._fds.get(name)
            if f is not None:
                self._fds.move_to_end(name)
            else:
                try:
                    f = self._fds[name] = _OpenFile(os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC))
                except FileNotFoundError:
                    raise NotFound(f"object {name} is missing") from None
                except OSError as e:
                    raise _read_error(e, name) from None
                while len(self._fds) > self._max_open:
                    self._fds.popitem(last=False)[1].drop()
            f.users += 1
            return f

    def _release(self, f: "_OpenFile") -> None:
        with self._fd_lock:
            f.users -= 1
            if f.dropped and not f.users:
                f.close()

    def get(self, name: str, offset: int = 0, length: Optional[int] = None) -> bytes:
        if length is None:
            try:
                with open(self._path(name), "rb") as f:
                    f.seek(offset)
                    return f.read()
            except FileNotFoundError:
                raise NotFound(f"object {name} is missing") from None
            except OSError as e:
                raise _read_error(e, name) from None
        f = self._acquire(name)
        try:
            data = os.pread(f.fd, length, offset)
        except OSError as e:
            raise _read_error(e, name) from None
        finally:
            self._release(f)
        if len(data) != length:
            raise StorageError(f"object {name} is truncated: wanted {length} bytes at {offset}, got {len(data)}")
        return data

    def readinto(self, name: str, offset: int, buf) -> None:
        """get(name, offset, len(buf)) into buf (a writable buffer the caller reuses:
        no new object, no fresh memory for the kernel to fault in)."""
        f = self._acquire(name)
        try:
            n = os.preadv(f.fd, [buf], offset)
        except OSError as e:
            raise _read_error(e, name) from None
        finally:
            self._release(f)
        if n != len(buf):
            raise StorageError(f"object {name} is truncated: wanted {len(buf)} bytes at {offset}, got {n}")

    def size(self, name: str) -> int:
        try:
            return os.stat(self._path(name)).st_size
        except FileNotFoundError:
            raise NotFound(f"object {name} is missing") from None
        except OSError as e:
            raise _read_error(e, name) from None

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._path(name))

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root)
            for fn in sorted(filenames):
                if not fn.startswith(_TMP_PREFIX):
                    yield fn if rel == "." else f"{rel}/{fn}"

    def delete(self, name: str) -> None:
        self._forget_fd(name)
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            raise NotFound(f"object {name} is missing") from None

    def stale_temporaries(self, prefix: str) -> list:
        """[(path, size)] of the tmp files killed writers of this host left below prefix."""
        out = []
        for dirpath, _, filenames in os.walk(self._path(prefix)):
            for fn in filenames:
                if fn.startswith(_TMP_PREFIX):
                    pid = fn[len(_TMP_PREFIX):].split("-")[0]
                    if pid.isdigit() and not pid_alive(int(pid)):
                        p = os.path.join(dirpath, fn)
                        try:
                            out.append((p, os.lstat(p).st_size))
                        except FileNotFoundError:
                            pass
        return out

    def remove_stale_temporaries(self, prefix: str) -> int:
        """Delete tmp files left by killed writers of this host below prefix."""
        n = 0
        for p, _ in self.stale_temporaries(prefix):
            try:
                os.unlink(p)
                n += 1
            except FileNotFoundError:
                pass
        return n

    def _forget_fd(self, name: str) -> None:
        with self._fd_lock:
            f = self._fds.pop(name, None)
            if f is not None:
                f.drop()

    def close(self) -> None:
        with self._fd_lock:
            for f in self._fds.values():
                f.drop()
            self._fds.clear()
        self._direct.clear()


class _OpenFile:
    """A cached read descriptor and the reads holding it (LocalStorage._fd_lock guards both)."""

    __slots__ = ("fd", "users", "dropped")

    def __init__(self, fd: int):
        self.fd = fd
        self.users = 0
        self.dropped = False

    def drop(self) -> None:
        """Out of the cache: closed now, or by the last read holding it."""
        self.dropped = True
        if not self.users:
            self.close()

    def close(self) -> None:
        if self.fd != -1:
            os.close(self.fd)
            self.fd = -1
