"""chunkrepo: a chunk-level deduplicating backup repository.

Files are cut into content-defined chunks (FastCDC), named by BLAKE3, stored
once (zstd) in pack files, with per-backup metadata in an LMDB index.
"""

__version__ = "0.1.0"

from .api import Repo  # noqa: E402
from .snapshots import DirectorySnapshot, FileSnapshot, restore  # noqa: E402

__all__ = ["Repo", "FileSnapshot", "DirectorySnapshot", "restore", "__version__"]
