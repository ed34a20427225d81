"""The backup's hook for symlinks into chunkrepo's own cache (restored or cloned trees).

`chunkrepo backup DEST` of a clone stores a link into the cache as the regular file it stands
for (mode 0644, the link's owner and times), with the chunk list the repository already has
for that digest: nothing is read.  That holds only while the object still holds its digest's
content (LocalCache.changed): a link to an object changed through a restored link is read as
the file it shows (edited_object).  A link whose digest the repository does not know is left
to the caller (stored as the symlink it is).
"""

import os
import stat
from typing import Optional, Tuple

from ...model import Node
from .cache import LocalCache
from . import store        # (module, not names: store imports the backup, which imports us)


class CacheLinks:
    def __init__(self, repo, cache: Optional[LocalCache] = None):
        self.repo = repo
        self.cache = cache or LocalCache()
        self.enabled = True

    def file_node(self, path: bytes, link_node: Node) -> Optional[Node]:
        """The regular-file node a symlink into the cache stands for, or None."""
        if not self.enabled:
            return None
        d = self.cache.digest_of_link_target(path, link_node.target)
        if d is None or self.cache.changed(d):
            return None
        info = store.stored_content(self.repo, d, self.cache)
        if info is None:
            return None
        size, chunks, sparse = info
        return link_node._replace(mode=stat.S_IFREG | store.LINK_FILE_MODE, size=size, nlink=1, target=b"",
                                  chunks=chunks, sparse=sparse)

    def edited_object(self, path: bytes, link_node: Node) -> Optional[Tuple[bytes, os.stat_result]]:
        """(path, lstat) of the cache object a symlink at path names when the object no longer
        holds the content of its name (it was written through a link): to be read as a file."""
        if not self.enabled:
            return None
        d = self.cache.digest_of_link_target(path, link_node.target)
        if d is None or not self.cache.changed(d):
            return None
        obj = os.fsencode(self.cache.object_path(d))
        try:
            st = os.lstat(obj)
        except OSError:
            return None
        return (obj, st) if stat.S_ISREG(st.st_mode) else None


def link_target(path: bytes) -> Optional[bytes]:
    try:
        return os.readlink(path)
    except OSError:
        return None
