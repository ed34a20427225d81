"""Putting cache objects at user paths: a symlink (default), a hard link, a reflink or a copy.

Every placement goes to a temporary name beside the destination and is renamed over it, so a
destination is always either the old entry or the new one.
"""

import errno
import fcntl
import os
import stat
import sys
from typing import Optional

from ...codec.hashing import new_hasher
from .cache import file_pieces, write_pieces

MODES = ("symlink", "hardlink", "reflink", "copy")
FICLONE = 0x40049409      # _IOW(0x94, 9, int): share the source's extents (btrfs, XFS, ...)

_warned = set()


def _note_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print(f"chunkrepo: {msg}", file=sys.stderr)


def _tmp_name(dest) -> bytes:
    dest = os.fsencode(dest)
    return os.path.join(os.path.dirname(dest), b".chunkrepo-tmp-%d-" % os.getpid() + os.path.basename(dest))


def is_placed(dest: str, obj: str, mode: str) -> bool:
    """dest already is this object placed in this mode (restoring onto it is a no-op)."""
    dest, obj = os.fsencode(dest), os.fsencode(obj)
    try:
        lst = os.lstat(dest)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(lst.st_mode):
        return mode == "symlink" and os.readlink(dest) == obj
    return mode == "hardlink" and is_hardlink_to(lst, obj)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")


def is_hardlink_to(st, obj) -> bool:
    """st (an lstat result) is the cache object obj itself: a file placed as a hard link."""
    if st.st_nlink < 2 or not stat.S_ISREG(st.st_mode):
        return False
    try:
        ost = os.stat(obj)
    except OSError:
        return False
    return (ost.st_dev, ost.st_ino) == (st.st_dev, st.st_ino)


def _copy(obj: str, tmp: str, file_mode: int, reflink: bool) -> bool:
    """Copy obj to tmp (sharing its extents when reflink and the filesystem can); True if it did."""
    with open(obj, "rb") as src, open(tmp, "xb") as dst:
        done = False
        if reflink:
            try:
                fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
                done = True
            except OSError as e:
                _note_once(f"reflink is not supported here ({os.strerror(e.errno or errno.EOPNOTSUPP)}); "
                           f"copying instead")
        if not done:    # holes stay holes
            size = os.fstat(src.fileno()).st_size
            write_pieces(dst.fileno(), file_pieces(src.fileno(), size), size)
        os.fchmod(dst.fileno(), file_mode)
    return done


def place(obj: str, dest: str, mode: str = "symlink", file_mode: int = 0o644) -> str:
    """Make dest the content of the cache object obj; returns the mode actually used (a
    hardlink or reflink the filesystem refuses falls back to "copy")."""
    check_mode(mode)
    obj, dest = os.fsencode(obj), os.fsencode(dest)
    tmp = _tmp_name(dest)
    if os.path.lexists(tmp):
        os.unlink(tmp)
    used = mode
    try:
        if mode == "symlink":
            os.symlink(obj, tmp)
        elif mode == "hardlink":
            try:
                os.link(obj, tmp)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                _note_once(f"hard links into the cache are not possible here ({e.strerror}); copying instead")
                _copy(obj, tmp, file_mode, reflink=False)
                used = "copy"
        elif not _copy(obj, tmp, file_mode, reflink=mode == "reflink"):
            used = "copy"
        os.rename(tmp, dest)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return used


def place_symlink(target, dest: str) -> None:
    """A symlink recorded in a snapshot: recreated as such (replacing a symlink already there)."""
    tmp = _tmp_name(dest)
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.rename(tmp, dest)


def same_content(path: str, digest: str, size: Optional[int]) -> bool:
    """A real file at path that already holds exactly this content."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
            return False
        with open(path, "rb") as f:
            return hash_stream(f) == digest
    except OSError:
        return False


def hash_stream(f) -> str:
    """The BLAKE3 (b3sum) digest of what f.read() gives until it is exhausted."""
    h = new_hasher()
    while True:
        b = f.read(4 << 20)
        if not b:
            return h.hexdigest()
        h.update(b)
