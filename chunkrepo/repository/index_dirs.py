"""The local index directory and its replacement by a rebuilt one.

A rebuild (rebuild-index, or opening a repository whose index is absent) never
writes the live `index/`: readers go on using it, complete, until the new one is
complete too.  Under the writer lock it builds the new index beside it and
switches (docs/format.md, "Rebuilding the index"):

1. `index.new-PID/`: a write session's recovery into an empty index, synced and closed;
2. renamed `index.ready-PID/` (complete); the directory synced;
3. `index.ready-PID/` and `index/` swapped in one step (renameat2 RENAME_EXCHANGE),
   the old one then renamed `index.replaced-PID/`; where that cannot be, two
   renames: `index/` to `index.replaced-PID/`, `index.ready-PID/` to `index/`;
   the directory synced;
4. `index.replaced-PID/` removed.

What a kill leaves: `index.new-PID/` (incomplete), `index.ready-PID/` (complete,
the switch not begun; or, after the swap, the old index) or `index.replaced-PID/`
beside `index/`: the next writer removes them (remove_leftovers).  Between the two
renames there is no `index/`: opening the repository (any command: finish_switch)
renames the ready one into place first.  Every writer removes ready ones, so one
that is there with no `index/` beside it is current.

`index.old-PID/` is what an earlier version's rebuild left: it renamed the
index there and built the new one in place, so a kill left a partial `index/`
and there the only complete copy.  Nothing here removes one; rebuild-index uses
it as a further fallback and removes it once its rebuild is switched in.
"""

import ctypes
import errno
import glob
import os
import shutil
from typing import Optional

from ..storage.local import fsync_dir
from .crash_points import crash_point

INDEX = "index"
NEW, READY, REPLACED, LEGACY = "index.new-", "index.ready-", "index.replaced-", "index.old-"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2     # <fcntl.h>, <linux/fs.h>


def own(prefix: str) -> str:
    """This process's directory of that kind (a name in the repository)."""
    return f"{prefix}{os.getpid()}"


def present(repo_path: str) -> bool:
    """index/ holds an index (an absent one is rebuilt when the repository is opened)."""
    return os.path.exists(os.path.join(repo_path, INDEX, "data.mdb"))


def leftovers(repo_path: str, prefix: str) -> list:
    """The paths of the directories of that kind, oldest first."""
    return sorted(glob.glob(os.path.join(glob.escape(repo_path), prefix + "*")), key=_mtime)


def finish_switch(repo_path: str) -> None:
    """Opening a local repository: if a rebuild was killed between its two renames
    (no index/, a complete index.ready-PID/), rename the ready one into place.  Needs
    no lock: a rename that another process made first fails and leaves index/ there."""
    if present(repo_path):
        return
    for ready in reversed(leftovers(repo_path, READY)):
        try:
            os.rename(ready, os.path.join(repo_path, INDEX))
        except OSError:
            continue    # renamed by another process meanwhile, or read-only: left as it is
        fsync_dir(repo_path)
        return


def remove_leftovers(repo_path: str, keep: Optional[str] = None) -> None:
    """Under the writer lock (no rebuild runs): remove what killed rebuilds left that is
    no copy of anything needed: incomplete new indexes, ready ones the switch never
    took (with index/ in place) and replaced ones.  keep: the index this process uses."""
    doomed = leftovers(repo_path, NEW)
    if present(repo_path):
        doomed += leftovers(repo_path, READY) + leftovers(repo_path, REPLACED)
    for path in doomed:
        if keep is None or os.path.abspath(path) != os.path.abspath(keep):
            shutil.rmtree(path, ignore_errors=True)


def build(repo_path: str, recover_into) -> tuple:
    """Under the writer lock: recover_into(name) fills the index named name in the
    repository (and closes it); returns (what it returned, the ready index's name)."""
    new = os.path.join(repo_path, own(NEW))
    try:
        got = recover_into(own(NEW))
        crash_point("rebuild-built")
        os.rename(new, os.path.join(repo_path, own(READY)))
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    fsync_dir(repo_path)
    return got, own(READY)


def switch(repo_path: str, ready: str) -> None:
    """Under the writer lock: put the built index `ready` in place of index/ (steps 3, 4)."""
    crash_point("rebuild-ready")
    index = os.path.join(repo_path, INDEX)
    replaced = os.path.join(repo_path, own(REPLACED))
    ready = os.path.join(repo_path, ready)
    if os.path.lexists(index) and _exchange(ready, index):
        # one step: index/ is the new index and the ready name holds the old one, which
        # the next writer removes if a kill comes before it is renamed (index/ is there)
        os.rename(ready, replaced)
    else:
        if os.path.lexists(index):
            os.rename(index, replaced)
            crash_point("rebuild-index-moved")
        _rename_into_place(repo_path, ready)
    fsync_dir(repo_path)
    crash_point("rebuild-switched")
    shutil.rmtree(replaced, ignore_errors=True)


def _rename_into_place(repo_path: str, ready: str) -> None:
    """The second of two renames.  A reader may have put it in place already
    (finish_switch), or have opened the index in the gap and so made an empty one
    there (it had seen index/ a moment before): that one is moved aside, for the
    next writer to remove."""
    index = os.path.join(repo_path, INDEX)
    for attempt in (1, 2):
        try:
            os.rename(ready, index)
            return
        except FileNotFoundError:
            if present(repo_path):
                return
            raise
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == 2:
                raise
            os.rename(index, os.path.join(repo_path, own(NEW)))


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE): no moment without
    index/, where a reader opening the repository would find none.  False where the
    system or the file system cannot (the switch takes two renames then)."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a)


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


