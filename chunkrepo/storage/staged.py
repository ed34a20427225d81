"""A new object staged in a local temporary file until commit() sends it.

The writer of the object stores (fsspec, native S3) and of RetryingStorage, which
must be able to send the whole object again: each subclass only says how commit()
sends the staged file.
"""

import errno
import os
import tempfile

from ..errors import StorageError


def staging_error(e: OSError, what: str) -> StorageError:
    if e.errno == errno.ENOSPC:
        return StorageError(f"no space left on device while {what}")
    return StorageError(f"{what}: {e.strerror or e}")


class StagedWriter:
    """write()/tell() into a temporary file in storage.tmp_dir; abort() drops it."""

    named = False       # True: a NamedTemporaryFile, for senders that open it by name

    def __init__(self, storage, name: str):
        self._s, self._name = storage, name
        try:
            if self.named:
                self._f = tempfile.NamedTemporaryFile(prefix="chunkrepo-upload-", dir=storage.tmp_dir,
                                                      delete=False)
            else:
                self._f = tempfile.TemporaryFile(prefix="chunkrepo-upload-", dir=storage.tmp_dir)
        except OSError as e:
            raise staging_error(e, f"staging {name}") from None

    def write(self, data) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            self.abort()
            raise staging_error(e, f"writing {self._name}") from None

    def tell(self) -> int:
        return self._f.tell()

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass
        if self.named:
            try:
                os.unlink(self._f.name)
            except OSError:
                pass
