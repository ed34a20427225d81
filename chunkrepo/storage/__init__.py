"""Names and bytes: where a repository's objects live.

The interface (storage.base.Storage) knows nothing of chunks or backups: it puts
whole objects atomically, reads them (or a byte range), lists and deletes them.
Object names are '/'-separated relative names such as 'packs/ab/ab12...'.
LocalStorage keeps objects as files in a directory; FsspecStorage keeps them on
any fsspec filesystem (S3 through s3fs, memory, ...); storage.open turns a
repository location (a path or a URL) into one of them.
"""

from .base import Storage, ObjectWriter
from .fsspec_storage import FsspecStorage
from .local import LocalStorage

__all__ = ["Storage", "ObjectWriter", "LocalStorage", "FsspecStorage"]
