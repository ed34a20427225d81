"""Backup: the scanner walks, the file saver reads, the tree saver writes records.

The main thread walks the tree in lockstep with the previous backup of the same
host+subset and decides per file: borrow the previous chunk list (nothing says
the file changed) or read it.  Files to read go in batches to a small thread
pool (blake3, pyfastcdc, zstd and reads release the GIL); directory records
are finished in post-order once their files are done.
"""

from .run import BackupOptions, BackupResult, run_backup

__all__ = ["BackupOptions", "BackupResult", "run_backup"]
