"""One consistent index snapshot for reading a whole backup (tar, restore).

A reader of a backup looks directory records and chunks up for as long as it
runs.  A read transaction opened after the start would miss what a forget and
a prune committed meanwhile (prune drops the index entries at once and defers
only the deletion of the pack files), and the reader would take the backup's
files for damaged.  So every lookup of one run goes through read transactions
opened together at its start and kept to its end: one for the walk and one per
worker thread (a transaction is used by one thread at a time; py-lmdb opens
the environment with MDB_NOTLS, so it may be handed to another thread).  A
pack that prune drops is deleted only once no reader older than the dropping
transaction is active, so these snapshots keep the packs they name.

The snapshots need not be one transaction: any snapshot in which the backup is
registered holds all its records and chunks (they are committed before the
backup, and only a prune after the forget removes them; a repack only moves
them, keeping the old pack for older readers).  The backup is looked for in
the last one opened (then every earlier one has it too); forgotten already,
its root record tells whether a prune took it away (BackupRemoved) or the
snapshot still holds everything.
"""

import contextlib
from typing import Iterator, List, Optional

from ..errors import NotFound


class BackupRemoved(NotFound):
    """The backup was forgotten and pruned between its lookup and the start of the read."""


@contextlib.contextmanager
def backup_views(repo, count: int, root_tid: bytes, backup_id: Optional[str] = None) -> Iterator[List]:
    """count read views of the index, opened together and closed when the block ends.

    Raises BackupRemoved when the backup backup_id (whose root record is
    root_tid) can no longer be read: forgotten and pruned since it was looked
    up.  Nothing has been read or written by then.  Without backup_id nothing is
    checked: a missing record is met by the walk as damage."""
    with contextlib.ExitStack() as stack:
        views = [stack.enter_context(repo.index.read()) for _ in range(max(1, count))]
        if backup_id is not None and not holds_backup(views[-1], backup_id, root_tid):
            raise BackupRemoved(f"backup {backup_id} was removed (forget and prune) after it was "
                                f"looked up; nothing was read")
        yield views


def holds_backup(view, backup_id: str, root_tid: bytes) -> bool:
    """Whether the snapshot view can read the whole backup: registered, or forgotten but
    its root record (and so everything below it) not pruned yet."""
    return (view.backup(backup_id) is not None or view.tree(root_tid) is not None
            or view.tree_data(root_tid) is not None)
