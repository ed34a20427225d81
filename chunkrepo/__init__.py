"""chunkrepo: a chunk-level deduplicating backup repository.

Files are cut into content-defined chunks (FastCDC), named by BLAKE3, stored
once (zstd) in pack files, with per-backup metadata in an LMDB index.
"""

__version__ = "0.1.0"

from .api import Repo  # noqa: E402

_SNAPSHOT_NAMES = ("DirectorySnapshot", "FileSnapshot", "restore")


def __getattr__(name):
    """The snapshot API is imported on first use (it imports the backup machinery,
    which a short command such as ls does not need)."""
    if name in _SNAPSHOT_NAMES:
        from . import snapshots
        return getattr(snapshots, name)
    raise AttributeError(f"module 'chunkrepo' has no attribute {name!r}")


__all__ = ["Repo", "FileSnapshot", "DirectorySnapshot", "restore", "__version__"]
