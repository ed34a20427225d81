"""Restoring a backup (or a part of it) into a directory.

Where things land
    start='/' recreates the whole backup below target: a backup of /tmp/x/src
    comes back as target/tmp/x/src/...  Any other start keeps only its last
    component, like ``tar -C target -xf ... tmp/x/src`` run from /tmp/x:
    start='/tmp/x/src' gives target/src/..., and start='/tmp/x/src/f' (a
    single file) gives target/f.  The backup does not store the metadata of
    '/' itself, so with start='/' the target directory keeps its own.

The target must not exist (it is created, parents included) or must be an
empty directory; anything else raises TargetNotEmpty before anything is
written.

Safety
    Everything is created relative to the file descriptor of its parent
    directory (mkdirat, openat with O_CREAT|O_EXCL|O_NOFOLLOW, symlinkat,
    mknodat, linkat without AT_SYMLINK_FOLLOW), and every directory is opened
    with O_DIRECTORY|O_NOFOLLOW, so a symlink the restore created is never
    followed and nothing is written outside target.  A name in a record that
    is b'', b'.', b'..' or contains b'/' or NUL is *not* raised as UnsafePath:
    the entry (and everything below it) is skipped and an error naming it is
    recorded in result.errors, and the rest of the backup is restored.  The
    same happens to an entry whose name already exists (a crafted record with
    duplicate names, e.g. a directory 'd' after a symlink 'd').

Errors
    Per-entry problems (a missing or corrupt chunk, a name the filesystem
    refuses, an xattr the filesystem does not take, a device node without
    root, ...) are recorded in result.errors as "PATH: message" with PATH the
    path in the backup, and the restore goes on.  A regular file whose content
    cannot be read completely is removed, never left zero-filled.  A full
    disk (ENOSPC/EDQUOT) stops the restore with StorageError.

Metadata
    Regular files: data, then fchown (root only), xattrs, fchmod (after chown,
    which clears setuid/setgid), futimens.  Directories get the same when
    they are left (post-order), so their mtime survives their content being
    written.  Owners are mapped by name when the name exists on this host,
    else numerically (as tar does); when not running as root owners are left
    to the current user silently.  The access time is set to the time the
    restore started (backups do not store atimes).
"""

import errno
import grp
import os
import pwd
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

from ..codec.hashing import ID_SIZE
from ..errors import ChunkrepoError, IntegrityError, StorageError, TargetNotEmpty
from ..model.nodes import BLK, CHR, DIR, FIFO, REG, SOCK, SYMLINK
from .file_reader import ChunkFile
from .prefetch import prefetch
from .traverse import find_node, split_path, walk

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | _CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_FIFO_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | _CLOEXEC
_FS_ENCODING = sys.getfilesystemencoding()
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_NO_XATTR_SUPPORT = (errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP))


@dataclass
class RestoreResult:
    """Counts of one restore.  files: regular files written plus FIFOs and
    device nodes; links: symlinks and extra names of hard-linked files;
    skipped: entries of the backup not recreated (each has an error)."""

    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes_written: int = 0
    skipped: int = 0
    errors: List[str] = field(default_factory=list)
    elapsed: float = 0.0

    def to_dict(self) -> dict:
        return {"files": self.files, "dirs": self.dirs, "links": self.links,
                "bytes_written": self.bytes_written, "skipped": self.skipped,
                "errors": list(self.errors), "elapsed": self.elapsed}


class _Partial(Exception):
    """A regular file whose content could not be restored (already removed)."""


def _safe_name(name) -> bool:
    return (isinstance(name, bytes) and name not in (b"", b".", b"..")
            and b"/" not in name and b"\0" not in name)


class _Dir:
    """An open directory of the restore stack."""

    __slots__ = ("key", "fd", "node", "shown", "rel")

    def __init__(self, key: bytes, fd: int, node, shown: str, rel: bytes):
        self.key = key        # its path in the backup (what walk calls it)
        self.fd = fd
        self.node = node      # None for the target itself: its metadata is left alone
        self.shown = shown    # for messages
        self.rel = rel        # its path relative to target (b"" for target)


class _Restorer:
    def __init__(self, repo, root_tid: bytes, target, start):
        self.repo = repo
        self.root_tid = root_tid
        self.target = os.fsencode(target)
        self.start = start
        self.res = RestoreResult()
        self.is_root = os.geteuid() == 0
        self.now = time.time_ns()
        self._uids: dict = {}
        self._gids: dict = {}
        self._first: dict = {}    # backup path of a hard link's first name -> (parent key, name, rel dir)
        self._xattr_unsupported = 0
        self.view = None          # the index snapshot of the walk
        self.prefetched = None    # chunks read ahead for the current entry (ops.prefetch)

    # -- helpers --------------------------------------------------------------
    def error(self, shown: str, msg: str) -> None:
        self.res.errors.append(f"{shown}: {msg}")

    def owner(self, node):
        uid = self._uids.get((node.user, node.uid))
        if uid is None:
            uid = node.uid
            if node.user:
                try:
                    uid = pwd.getpwnam(node.user).pw_uid
                except KeyError:
                    pass
            self._uids[(node.user, node.uid)] = uid
        gid = self._gids.get((node.group, node.gid))
        if gid is None:
            gid = node.gid
            if node.group:
                try:
                    gid = grp.getgrnam(node.group).gr_gid
                except KeyError:
                    pass
            self._gids[(node.group, node.gid)] = gid
        return uid, gid

    def set_xattrs(self, where, node, shown: str, follow: bool = True) -> None:
        for name, value in node.xattrs:
            try:
                os.setxattr(where, name, value, follow_symlinks=follow)
            except OSError as e:
                if e.errno in _NO_XATTR_SUPPORT:
                    self._xattr_unsupported += 1
                else:
                    self.error(shown, f"cannot set extended attribute {os.fsdecode(name)}: {e.strerror}")

    def apply_fd(self, fd: int, node, shown: str) -> None:
        """Owner, xattrs, mode, times of an open file or directory, in that order."""
        if self.is_root:
            try:
                os.fchown(fd, *self.owner(node))
            except OSError as e:
                self.error(shown, f"cannot set owner: {e.strerror}")
        if node.xattrs:
            self.set_xattrs(fd, node, shown)
        os.fchmod(fd, stat.S_IMODE(node.mode))
        os.utime(fd, ns=(self.now, node.mtime_ns))

    def apply_at(self, pfd: int, name: bytes, node, shown: str, mode: bool = True) -> None:
        """The same for an entry that cannot be opened (symlink, device), by name."""
        if self.is_root:
            try:
                os.chown(name, *self.owner(node), dir_fd=pfd, follow_symlinks=False)
            except OSError as e:
                self.error(shown, f"cannot set owner: {e.strerror}")
        if node.xattrs:
            # lsetxattr has no *at form; /proc/self/fd/N names the parent exactly
            self.set_xattrs(b"/proc/self/fd/%d/%s" % (pfd, name), node, shown, follow=False)
        if mode:
            # the entry was just created by us in a directory we created, so
            # fchmodat (which follows symlinks on Linux) reaches that entry
            os.chmod(name, stat.S_IMODE(node.mode), dir_fd=pfd)
        os.utime(name, ns=(self.now, node.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    # -- target ---------------------------------------------------------------
    def open_target(self) -> int:
        t = self.target
        try:
            st = os.stat(t)
        except FileNotFoundError:
            os.makedirs(t)
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise TargetNotEmpty(f"restore target {os.fsdecode(t)} exists and is not a directory")
            with os.scandir(t) as it:
                if next(it, None) is not None:
                    raise TargetNotEmpty(f"restore target {os.fsdecode(t)} is not empty")
        return os.open(t, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)

    # -- the walk -------------------------------------------------------------
    def run(self) -> RestoreResult:
        t0 = time.monotonic()
        parts = split_path(self.start)
        find_node(self.repo, self.root_tid, self.start)     # NotFound before touching target
        base = b"/".join(parts[:-1])                        # backup path that maps onto target
        self.base_len = len(base) + 1 if base else 0
        stack = [_Dir(base, self.open_target(), None, os.fsdecode(self.target), b"")]
        try:
            # one read snapshot of the index for the single-chunk fast path
            with self.repo.index.read() as self.view:
                entries = walk(self.repo, self.root_tid, self.start)
                for entry, self.prefetched in prefetch(self.repo, entries):
                    self.entry(stack, entry)
        finally:
            self.view = None
            while stack:
                self.leave(stack.pop())
        if self._xattr_unsupported:
            self.res.errors.append(
                f"{os.fsdecode(self.target)}: the filesystem does not support extended attributes: "
                f"{self._xattr_unsupported} attributes not restored")
        self.res.elapsed = time.monotonic() - t0
        return self.res

    def leave(self, d: _Dir) -> None:
        try:
            if d.node is not None:
                self.apply_fd(d.fd, d.node, d.shown)
        except OSError as e:
            self.error(d.shown, e.strerror or str(e))
        finally:
            os.close(d.fd)

    def entry(self, stack: list, entry) -> None:
        path, node, link_to = entry
        name = node.name
        plen = len(path) - len(name) - 1
        parent_key = path[:plen] if plen > 0 else b""
        if stack[-1].key != parent_key:
            for i in range(len(stack) - 2, -1, -1):
                if stack[i].key == parent_key:
                    while len(stack) > i + 1:
                        self.leave(stack.pop())
                    break
            else:
                # below a directory that was not restored (already reported)
                self.res.skipped += 1
                return
        parent = stack[-1]
        shown = "/" + path.decode(_FS_ENCODING, "surrogateescape")
        if not _safe_name(name):
            self.error(shown, f"unsafe name {name!r} in the backup's record: refused, not restored")
            self.res.skipped += 1
            return
        pfd = parent.fd
        kind = node.kind
        try:
            if kind == REG:
                if link_to is not None and self.hard_link(stack, pfd, name, link_to, shown):
                    self.res.links += 1
                    return
                self.write_file(pfd, name, node, shown)
                self.res.files += 1
                if node.nlink > 1:
                    self._first.setdefault(link_to or path, (parent_key, name, parent.rel))
            elif kind == DIR:
                os.mkdir(name, 0o700, dir_fd=pfd)
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
                rel = parent.rel + b"/" + name if parent.rel else name
                stack.append(_Dir(path, fd, node, shown, rel))
                self.res.dirs += 1
            elif kind == SYMLINK:
                os.symlink(node.target, name, dir_fd=pfd)
                self.apply_at(pfd, name, node, shown, mode=False)
                self.res.links += 1
            elif kind == FIFO:
                os.mkfifo(name, 0o600, dir_fd=pfd)
                fd = os.open(name, _FIFO_FLAGS, dir_fd=pfd)
                try:
                    self.apply_fd(fd, node, shown)
                finally:
                    os.close(fd)
                self.res.files += 1
            elif kind in (CHR, BLK):
                if not self.is_root:
                    self.error(shown, "device node not restored: creating devices needs root")
                    self.res.skipped += 1
                    return
                os.mknod(name, stat.S_IFMT(node.mode) | 0o600, node.rdev, dir_fd=pfd)
                self.apply_at(pfd, name, node, shown)
                self.res.files += 1
            elif kind == SOCK:
                self.error(shown, "is a socket: not restored")
                self.res.skipped += 1
            else:
                self.error(shown, f"unknown file type {node.mode:#o}: not restored")
                self.res.skipped += 1
        except _Partial:
            self.res.skipped += 1
        except OSError as e:
            if e.errno in _DISK_FULL:
                raise StorageError(f"{shown}: {e.strerror} (restore stopped)") from None
            if e.errno == errno.EEXIST:
                self.error(shown, "name already restored (duplicate name in the backup's record): skipped")
            else:
                self.error(shown, e.strerror or str(e))
            self.res.skipped += 1

    # -- regular files --------------------------------------------------------
    def write_file(self, pfd: int, name: bytes, node, shown: str) -> None:
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
        done = False
        try:
            if node.chunks or node.size:
                self.fill(fd, node, shown)
            self.apply_fd(fd, node, shown)
            done = True
        except ChunkrepoError as e:
            msg = str(e)
            if not msg.startswith(shown):
                msg = f"{shown}: {msg}"
            self.res.errors.append(f"{msg}; the partial file was removed")
            raise _Partial() from None
        finally:
            os.close(fd)
            if not done:
                try:
                    os.unlink(name, dir_fd=pfd)
                except OSError:
                    pass

    def fill(self, fd: int, node, shown: str) -> None:
        pf, self.prefetched = self.prefetched, None    # chunks read ahead, when this is their file
        if node.sparse is None and len(node.chunks) == ID_SIZE:
            # most files are one chunk: skip ChunkFile's setup (same checks, fewer lookups)
            try:
                data = next(pf.data()) if pf is not None else self.repo.read_chunk(node.chunks, self.view)
            except ChunkrepoError as e:
                raise IntegrityError(f"{shown}: {e}") from None
            if len(data) != node.size:
                raise StorageError(f"{shown}: stored content has {len(data)} bytes, expected {node.size}")
            mv = memoryview(data)
            while mv:
                k = os.write(fd, mv)
                self.res.bytes_written += k
                mv = mv[k:]
            return
        cf = ChunkFile(self.repo, node, shown.encode(_FS_ENCODING, "surrogateescape"), self.view)
        chunks = pf.data() if pf is not None else None
        sparse = node.sparse is not None
        total = 0
        write, pwrite = os.write, os.pwrite
        try:
            if sparse:
                for off, mv in cf.iter_data(chunks):
                    while mv:
                        k = pwrite(fd, mv, off)
                        off += k
                        total += k
                        mv = mv[k:]
            else:
                for off, mv in cf.iter_data(chunks):
                    if off != total:
                        raise StorageError(f"{shown}: stored content is not contiguous")
                    while mv:
                        k = write(fd, mv)
                        total += k
                        mv = mv[k:]
        except IndexError:   # more stored data than the extents say
            raise StorageError(f"{shown}: stored content does not match its extents") from None
        finally:
            self.res.bytes_written += total
        expected = sum(e[1] for e in node.sparse) if sparse else node.size
        if total != expected:
            raise StorageError(f"{shown}: stored content has {total} bytes, expected {expected}")
        if sparse:
            os.ftruncate(fd, node.size)   # holes after the last extent

    def hard_link(self, stack: list, pfd: int, name: bytes, link_to: bytes, shown: str) -> bool:
        """Link to the restored first name; False when it must get its own data."""
        first = self._first.get(link_to)
        if first is None:
            return False     # first name outside the restored part, or it failed
        fkey, fname, frel = first
        sfd, close = None, False
        for d in reversed(stack):
            if d.key == fkey:
                sfd = d.fd
                break
        try:
            if sfd is None:
                sfd, close = self.open_rel(frel), True
            os.link(fname, name, src_dir_fd=sfd, dst_dir_fd=pfd, follow_symlinks=False)
            return True
        except OSError as e:
            if e.errno in _DISK_FULL or e.errno == errno.EEXIST:
                raise
            self.error(shown, f"cannot hard link to /{os.fsdecode(link_to)} ({e.strerror}): "
                              "restored as a separate copy")
            return False
        finally:
            if close:
                os.close(sfd)

    def open_rel(self, rel: bytes) -> int:
        """Open a directory we restored, component by component, never following symlinks."""
        fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        try:
            for comp in rel.split(b"/") if rel else ():
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd


def restore_tree(repo, root_tid: bytes, target, start="/") -> RestoreResult:
    """Recreate the backup whose root record is root_tid (or start below it) in target.

    See the module docstring for where entries land, what is refused (unsafe
    names are skipped and reported in result.errors, not raised) and how
    errors are reported.  Raises NotFound (start not in the backup),
    TargetNotEmpty, and StorageError on a full disk.
    """
    return _Restorer(repo, root_tid, target, start).run()
