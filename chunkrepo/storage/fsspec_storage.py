"""A storage on any fsspec filesystem: S3 (s3fs), memory, GCS, SFTP, a local folder, ...

Object stores (S3 and the like, and fsspec's memory filesystem) replace an object
atomically on PUT, so a large object is written to a local temporary file (packs
are tens of MiB: never held in RAM) and uploaded in one go on commit().  Other
filesystems (a local folder, SFTP) show a file while it is being written, so there
an object is uploaded under a temporary name and renamed into place.

Reads use ranged GETs (fs.cat_file with start/end): a chunk costs one request.
put_if_absent is the conditional create a lock needs: `If-None-Match: *` on S3,
O_EXCL + link on a local folder; elsewhere (memory, SFTP) a check-then-put under
a process-wide lock, which is not safe between hosts.
"""

import errno
import os
import socket
import threading
from typing import Iterator, Optional

from ..errors import NotFound, StorageError
from ..process import pid_alive
from .staged import StagedWriter

# filesystems whose PUT makes an object appear whole or not at all
_ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "gcp", "abfs", "abfss", "az", "adl", "oci", "oss", "memory"}
_TMP_PREFIX = ".tmp-"
_put_lock = threading.Lock()    # the check-then-put fallback of put_if_absent


def _protocols(fs) -> set:
    p = fs.protocol
    return {p} if isinstance(p, str) else set(p)


def _error(e: Exception, what: str) -> StorageError:
    if getattr(e, "errno", None) == errno.ENOSPC:
        return StorageError(f"no space left on device while {what}")
    return StorageError(f"{what}: {getattr(e, 'strerror', None) or e}")


def _precondition_failed(e: Exception) -> bool:
    """s3fs maps a 412 to FileExistsError when the server names the condition
    (AWS, moto) and to OSError(EINVAL) when it does not (Ceph RGW)."""
    if isinstance(e, FileExistsError):
        return True
    cause = getattr(e.__cause__, "response", None) or {}
    code = cause.get("Error", {}).get("Code", "")
    return getattr(e, "errno", None) == errno.EINVAL and code in ("PreconditionFailed", "412")


def _range_not_satisfiable(e: Exception) -> bool:
    """S3's 416 InvalidRange (s3fs: OSError(EINVAL) caused by it): what "bytes=0-" of an
    empty object, or "bytes=N-" of an N-byte one, gets."""
    response = getattr(e.__cause__, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return response.get("Error", {}).get("Code") == "InvalidRange" or status == 416


class _FsspecWriter(StagedWriter):
    """Buffers a new object in a local temporary file; commit() uploads it by name."""

    named = True

    def commit(self) -> None:
        try:
            self._f.close()
            self._s.upload_file(self._f.name, self._name)
        except OSError as e:
            raise _error(e, f"writing {self._name}") from None
        finally:
            self.abort()


class FsspecStorage:
    """Objects below root on the fsspec filesystem fs."""

    def __init__(self, fs, root: str, tmp_dir: Optional[str] = None):
        self.fs = fs
        self.root = fs._strip_protocol(root).rstrip("/")
        self.tmp_dir = tmp_dir          # where uploads are staged (default: the system's temp dir)
        protocols = _protocols(fs)
        self.atomic_put = bool(protocols & _ATOMIC_PUT)
        self._local = "file" in protocols or "local" in protocols

    def _path(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad object name {name!r}")
        return f"{self.root}/{name}"

    def _tmp_path(self, name: str) -> str:
        d, _, base = self._path(name).rpartition("/")
        return f"{d}/{_TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}-{base}"

    def ensure_root(self) -> None:
        """Create the root folder (on S3: the bucket, if it is missing and may be created)."""
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except Exception as e:     # the filesystem's own errors too (botocore's)
            raise _error(e, f"creating {self.root}") from None

    # -- writing --------------------------------------------------------------
    def upload_file(self, local_file: str, name: str) -> None:
        """Store the contents of a local file under name, atomically (as a writer's
        commit does); the file stays.  For a caller that staged the object itself
        (RetryingStorage): no second copy."""
        try:
            self._upload(local_file, name)
        except Exception as e:     # the filesystem's own errors too (botocore's)
            raise _error(e, f"writing {name}") from None

    def _upload(self, local_file: str, name: str) -> None:
        path = self._path(name)
        if self.atomic_put:
            self.fs.put_file(local_file, path)
            return
        tmp = self._tmp_path(name)
        self.fs.makedirs(tmp.rpartition("/")[0], exist_ok=True)
        self.fs.put_file(local_file, tmp)
        try:
            self.fs.mv(tmp, path)
        except BaseException:
            self._rm_quietly(tmp)
            raise

    def create(self, name: str) -> _FsspecWriter:
        self._path(name)
        return _FsspecWriter(self, name)

    def put(self, name: str, data: bytes) -> None:
        if not self.atomic_put:
            w = self.create(name)
            w.write(data)
            w.commit()
            return
        try:
            self.fs.pipe_file(self._path(name), bytes(data))
        except Exception as e:     # the filesystem's own errors too (botocore's)
            raise _error(e, f"writing {name}") from None

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Create the object unless it exists; False if it did (nothing written)."""
        path = self._path(name)
        try:
            if "s3" in _protocols(self.fs) or "s3a" in _protocols(self.fs):
                self.fs.pipe_file(path, bytes(data), mode="create")      # If-None-Match: *
            elif self._local:
                return self._local_create(path, bytes(data))
            else:
                with _put_lock:
                    if self.fs.exists(path):
                        return False
                    self.put(name, data)
            return True
        except Exception as e:     # the filesystem's own errors too (botocore's)
            if _precondition_failed(e):
                return False
            raise _error(e, f"creating {name}") from None

    def _local_create(self, path: str, data: bytes) -> bool:
        """A complete file linked into place: link(2) fails if the name exists."""
        d = os.path.dirname(path)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f"{_TMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    # -- reading --------------------------------------------------------------
    def get(self, name: str, offset: int = 0, length: Optional[int] = None) -> bytes:
        path = self._path(name)
        try:
            if length is None:
                data = self.fs.cat_file(path, start=offset)    # a Range read: no HEAD first
            elif length == 0:
                return b""
            else:
                data = self.fs.cat_file(path, start=offset, end=offset + length)
        except FileNotFoundError:
            raise NotFound(f"object {name} is missing") from None
        except Exception as e:     # the filesystem's own errors too (botocore's)
            if length is None and _range_not_satisfiable(e) and offset >= self.size(name):
                return b""      # an empty object, or a read from the very end of one
            raise _error(e, f"reading {name}") from None
        if length is not None and len(data) != length:
            raise StorageError(f"object {name} is truncated: wanted {length} bytes at {offset}, got {len(data)}")
        return data

    def size(self, name: str) -> int:
        path = self._path(name)
        self.fs.invalidate_cache(path)
        try:
            return int(self.fs.info(path)["size"])
        except FileNotFoundError:
            raise NotFound(f"object {name} is missing") from None
        except Exception as e:     # the filesystem's own errors too (botocore's)
            raise _error(e, f"reading {name}") from None

    def exists(self, name: str) -> bool:
        path = self._path(name)
        self.fs.invalidate_cache(path)
        try:
            return bool(self.fs.isfile(path))
        except Exception as e:     # the filesystem's own errors too (botocore's)
            raise _error(e, f"looking for {name}") from None

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return
        except Exception as e:     # the filesystem's own errors too (botocore's)
            raise _error(e, f"listing {prefix or 'the repository'}") from None
        start = len(self.root) + 1
        for p in sorted(found):
            p = self.fs._strip_protocol(p)
            rel = p[start:]
            if p.startswith(self.root + "/") and not rel.rsplit("/", 1)[-1].startswith(_TMP_PREFIX):
                yield rel

    # -- deleting -------------------------------------------------------------
    def delete(self, name: str) -> None:
        path = self._path(name)
        if not self.exists(name):       # S3 deletes a missing key without complaint
            raise NotFound(f"object {name} is missing")
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            raise NotFound(f"object {name} is missing") from None
        except Exception as e:     # the filesystem's own errors too (botocore's)
            raise _error(e, f"deleting {name}") from None

    def _rm_quietly(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except OSError:
            pass

    def stale_temporaries(self, prefix: str) -> list:
        """[(path, size)] of the temporaries this host's killed writers left below prefix.

        Object stores have none: an upload is one PUT (a killed multipart upload
        is invisible; the bucket's lifecycle rule for incomplete uploads clears it)."""
        if self.atomic_put:
            return []
        host = socket.gethostname()
        base = self._path(prefix)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for p, info in found.items():
            fn = p.rsplit("/", 1)[-1]
            if not fn.startswith(f"{_TMP_PREFIX}{host}-"):
                continue
            pid = fn[len(_TMP_PREFIX) + len(host) + 1:].split("-")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                out.append((p, info.get("size") or 0))
        return out

    def remove_stale_temporaries(self, prefix: str) -> int:
        """Delete temporaries this host's killed writers left below prefix."""
        found = self.stale_temporaries(prefix)
        for p, _ in found:
            self._rm_quietly(p)
        return len(found)

    def close(self) -> None:
        pass

