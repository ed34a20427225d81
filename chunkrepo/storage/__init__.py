"""Names and bytes: where a repository's objects live.

The interface (storage.base.Storage) knows nothing of chunks or backups: it puts
whole objects atomically, reads them (or a byte range), lists and deletes them.
Object names are '/'-separated relative names such as 'packs/ab/ab12...'.
Only the local directory implementation exists yet; fsspec and S3 follow.
"""

from .base import Storage, ObjectWriter
from .local import LocalStorage

__all__ = ["Storage", "ObjectWriter", "LocalStorage"]
