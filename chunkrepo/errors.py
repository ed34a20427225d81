"""The one exception hierarchy of chunkrepo.

Every error a user can cause or meet derives from ChunkrepoError; the CLI turns
these into a one-line message and a non-zero exit, never a traceback.
"""

# why a blob is "lost" (docs/format.md, Lost blobs), in every message about one: check
# --repair marks a damaged copy lost; registering a backup (rebuild-index, a write session's
# recovery, a writer that lost its lock and registered what it stored meanwhile) marks lost a
# blob its records name but no pack holds
LOST_WHY = ("its only stored copy was found damaged or missing (by check --repair, or when a backup naming "
            "it was registered: by rebuild-index, by a write session's recovery, or by a writer that lost "
            "its lock)")


class ChunkrepoError(Exception):
    """Base of every error chunkrepo raises on purpose."""

    exit_code = 1


class NotFound(ChunkrepoError):
    """A repository, backup, path or object that does not exist."""


class NotARepository(NotFound):
    """A path that holds no chunkrepo repository."""


class AmbiguousId(ChunkrepoError):
    """A backup id prefix that matches more than one backup."""


class IntegrityError(ChunkrepoError):
    """Stored data that does not match its hash, or a broken structure."""


class FormatVersionError(ChunkrepoError):
    """A repository written by a newer (or unknown) format version."""


class RepoLocked(ChunkrepoError):
    """Another writer holds the repository lock."""


class LockLost(RepoLocked):
    """A writer's lock was removed or taken over while it worked (a lease in an object
    store; REPO/lock of a local repository removed or replaced)."""

    def __init__(self, why: str, consequence: str = "nothing more was committed"):
        super().__init__(f"lost the repository lock ({why}); {consequence}")
        self.why = why


class ReadOnlyRepository(ChunkrepoError):
    """A write to a repository this process can only read (a read-only file system, no permission)."""


class IndexDamaged(ChunkrepoError):
    """The local LMDB index fails liblmdb's own checks; rebuild-index makes a new one.

    Not an IntegrityError: those name one damaged blob or record, which callers may
    skip (back a directory up afresh, restore the other files); a damaged index
    must stop whatever uses it."""


class TargetNotEmpty(ChunkrepoError):
    """A restore target that already has content."""


class UnsafePath(IntegrityError):
    """A record holding a name that would escape the restore target."""


class StorageError(ChunkrepoError):
    """The storage below the repository failed (full disk, I/O error, ...)."""
