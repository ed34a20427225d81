"""Where the filesystem puts a restored tree: ext2/3/4's "top directory" hint.

A restore recreates a whole hierarchy (often a host's: etc/, home/, usr/,
var/) below one target directory.  ext4's Orlov allocator spreads the
directories made directly in the filesystem's root over the block groups
with the fewest directories, and keeps every other directory near its
parent: in the parent's group of groups, with the inodes freed there most
recently.  A directory with the TOPDIR flag (`chattr +T`, "the top of
directory hierarchies") has its subdirectories placed like the root's.

While a restore writes, its target gets that flag, so the restored tree
starts in groups of its own, as the tree it was backed up from did.  Each
directory made directly in the target is made under a random name and then
renamed: ext4 starts its search for the group with the fewest directories at
the hash of the new name, and with the real name a restore of the same tree
went back to the very groups the deletion of the last one had emptied.  This
matters on a filesystem without a journal: there the allocator skips every
inode freed in the last minute (six while its inode-table block is dirty) and
scans them again for every new inode, so a tree restored where another was
just deleted paid seconds of kernel time (docs/design.md, "Restore against
restic").  The flag is taken off again when the restore ends (a killed restore
leaves it: a placement hint, nothing more).  Filesystems without the flag
(tmpfs, XFS, btrfs, NFS) refuse the ioctl, and nothing changes.
"""

import ctypes
import errno
import fcntl
import os
import struct

# <linux/fs.h>: FS_IOC_GETFLAGS / FS_IOC_SETFLAGS (the kernel reads an int) and the flag
_GETFLAGS, _SETFLAGS = 0x80086601, 0x40086602
_TOPDIR_FL = 0x00020000
_RENAME_NOREPLACE = 1
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def _flags(fd: int):
    try:
        return struct.unpack("i", fcntl.ioctl(fd, _GETFLAGS, b"\0" * 4))[0]
    except OSError:
        return None


def _set(fd: int, flags: int) -> bool:
    try:
        fcntl.ioctl(fd, _SETFLAGS, struct.pack("i", flags))
        return True
    except OSError:
        return False


class TopDirHint:
    """Marks the directory open as fd a top directory until close().  A no-op where the
    filesystem has no such flag, or the directory has it already."""

    def __init__(self, fd: int):
        self.fd = None
        flags = _flags(fd)
        if (flags is not None and not flags & _TOPDIR_FL
                and os.environ.get("CHUNKREPO_TOPDIR_HINT", "1") != "0"
                and _set(fd, flags | _TOPDIR_FL)):
            self.fd = os.dup(fd)

    @property
    def active(self) -> bool:
        return self.fd is not None

    def mkdir(self, name: bytes, mode: int, dir_fd: int) -> None:
        """os.mkdir(name, mode, dir_fd=dir_fd) for a directory made directly in the marked one."""
        if self.fd is None:
            os.mkdir(name, mode, dir_fd=dir_fd)
            return
        tmp = b".chunkrepo-new-" + os.urandom(8).hex().encode()
        os.mkdir(tmp, mode, dir_fd=dir_fd)
        failed = None
        if _renameat2 is None or _renameat2(dir_fd, tmp, dir_fd, name, _RENAME_NOREPLACE) != 0:
            failed = ctypes.get_errno() if _renameat2 is not None else errno.ENOSYS
        if failed:
            os.rmdir(tmp, dir_fd=dir_fd)
            if failed not in (errno.ENOSYS, errno.EINVAL):
                raise OSError(failed, os.strerror(failed), name)
            os.mkdir(name, mode, dir_fd=dir_fd)     # no renameat2 here: the real name at once

    def close(self) -> None:
        """Take the flag off again (any other flag set meanwhile is kept)."""
        if self.fd is None:
            return
        try:
            flags = _flags(self.fd)
            if flags is not None:
                _set(self.fd, flags & ~_TOPDIR_FL)
        finally:
            os.close(self.fd)
            self.fd = None
