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

Threads
    The main thread walks the backup and creates directories, symlinks,
    FIFOs, devices and hard links; it takes each regular file's chunks out of
    the prefetch stream in order and hands them to a few writer threads, which
    create, fill and finish the file relative to its parent's descriptor
    (creating and writing files is mostly kernel time, and os.open/os.write
    release the GIL, so both cores work).  A directory keeps its descriptor
    open, and gets its metadata, once the main thread has left it *and* its
    last file is finished.  A hard link waits until its first name is
    complete.  Bytes handed to writers and not yet written are bounded (_BUDGET),
    and every queued file counts at least _JOB_COST against it, which bounds
    the directories held open for their files too.
"""

import errno
import grp
import os
import pwd
import queue
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from ..codec.hashing import ID_SIZE
from ..errors import ChunkrepoError, StorageError, TargetNotEmpty
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


_WRITERS = 3              # writer threads
_BUDGET = 16 << 20        # bytes handed to writers and not written yet
_PREFETCH_BUDGET = 8 << 20   # chunks read ahead of the walk (ops.prefetch)
_JOB_COST = 128 << 10     # the least a queued file counts: at most _BUDGET/_JOB_COST files queued
_RUN = 16                 # files of one directory handed to the same writer in a row
_PROGRESS_EVERY = 0.2     # seconds between progress calls

_END = object()           # the end of a file's chunks on its feed


class _Aborted(Exception):
    """Put on a feed when the main thread stops in the middle of a file."""


class _Budget:
    """Bytes handed to the writers and not yet written (only the main thread waits)."""

    __slots__ = ("_cond", "_used", "_limit", "aborted")

    def __init__(self, limit: int):
        self._cond = threading.Condition(threading.Lock())
        self._used = 0
        self._limit = limit
        self.aborted = False

    def take(self, n: int) -> None:
        with self._cond:
            while self._used and self._used + n > self._limit and not self.aborted:
                self._cond.wait()
            self._used += n

    def give(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify()

    def abort(self) -> None:
        with self._cond:
            self.aborted = True
            self._cond.notify_all()


def _safe_name(name) -> bool:
    return (isinstance(name, bytes) and name not in (b"", b".", b"..")
            and b"/" not in name and b"\0" not in name)


class _Dir:
    """A directory being restored: on the main thread's stack, then until its last file is done."""

    __slots__ = ("key", "fd", "node", "shown", "rel", "owner", "names", "pending", "left")

    def __init__(self, key: bytes, fd: int, node, shown: str, rel: bytes, owner=None):
        self.key = key        # its path in the backup (what walk calls it)
        self.fd = fd
        self.node = node      # None for the target itself: its metadata is left alone
        self.shown = shown    # for messages
        self.rel = rel        # its path relative to target (b"" for target)
        self.owner = owner    # (uid, gid) to set, when root
        self.names = set()    # names created in it (duplicates in a record are refused)
        self.pending = 0      # files handed to writers and not finished (under _Restorer.lock)
        self.left = False     # the main thread is done with it (under _Restorer.lock)


class _Job:
    """One regular file for a writer: its data whole (data), or chunk by chunk (feed)."""

    __slots__ = ("dir", "name", "node", "shown", "owner", "data", "cf", "feed", "held", "done", "ok")

    def __init__(self, d: _Dir, name: bytes, node, shown: str, owner):
        self.dir = d
        self.name = name
        self.node = node
        self.shown = shown
        self.owner = owner
        self.data = None      # the single chunk of a plain file
        self.cf = None        # ChunkFile (layout) of any other file with content
        self.feed = None      # SimpleQueue of its chunks, then _END or an exception
        self.held = 0         # bytes of the chunk being written (budget not given back yet)
        self.done = None      # Event, for the first name of hard links
        self.ok = False


class _Counts:
    """What one writer did (each writer has its own: no lock, no lost updates)."""

    __slots__ = ("files", "skipped", "bytes")

    def __init__(self):
        self.files = self.skipped = self.bytes = 0


class _Restorer:
    def __init__(self, repo, root_tid: bytes, target, start, progress=None, writers: int = _WRITERS):
        self.repo = repo
        self.root_tid = root_tid
        self.target = os.fsencode(target)
        self.start = start
        self.res = RestoreResult()
        self.is_root = os.geteuid() == 0
        self.created_owner = None   # (uid, gid) every new entry gets, when certain
        self.now = time.time_ns()
        self.umask = _umask()
        self.progress = progress
        self.nwriters = max(1, writers)
        self._uids: dict = {}
        self._gids: dict = {}
        self._first: dict = {}    # backup path of a hard link's first name -> (parent key, name, rel dir, job)
        self._xattr_unsupported = 0
        self.view = None          # the index snapshot of the walk
        self.prefetched = None    # chunks read ahead for the current entry (ops.prefetch)
        self.lock = threading.Lock()           # _Dir.pending/left, _xattr_unsupported, fatal
        self.budget = _Budget(_BUDGET)
        self.queues: List["queue.SimpleQueue"] = []   # one per writer
        self._turn = (None, 0, 0)     # (directory, writer, files) of the last file handed out
        self.counts: List[_Counts] = []
        self.fatal: Optional[BaseException] = None   # a writer's reason to stop the restore

    # -- helpers --------------------------------------------------------------
    def error(self, shown: str, msg: str) -> None:
        self.res.errors.append(f"{shown}: {msg}")    # list.append: safe from any thread

    def fail(self, exc: BaseException) -> None:
        """Stop the restore (from a writer): the main thread raises exc."""
        with self.lock:
            if self.fatal is None:
                self.fatal = exc
        self.budget.abort()

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
                    with self.lock:
                        self._xattr_unsupported += 1
                else:
                    self.error(shown, f"cannot set extended attribute {os.fsdecode(name)}: {e.strerror}")

    def apply_fd(self, fd: int, node, shown: str, owner=None, mode_set: bool = False) -> None:
        """Owner, xattrs, mode, times of an open file or directory, in that order.

        owner: (uid, gid) looked up already (writers get it from the main thread);
        mode_set: the file was created with its mode (no set-id bits, umask clear)."""
        if self.is_root:
            owner = owner or self.owner(node)
            if owner != self.created_owner:
                try:
                    os.fchown(fd, *owner)
                except OSError as e:
                    self.error(shown, f"cannot set owner: {e.strerror}")
        if node.xattrs:
            self.set_xattrs(fd, node, shown)
        if not mode_set:
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

    def snapshot(self) -> RestoreResult:
        """The running counts (main thread's plus writers')."""
        r = self.res
        s = RestoreResult(r.files, r.dirs, r.links, r.bytes_written, r.skipped, r.errors)
        for c in self.counts:
            s.files += c.files
            s.skipped += c.skipped
            s.bytes_written += c.bytes
        return s

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
        fd = os.open(t, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        if not os.fstat(fd).st_mode & stat.S_ISGID:
            # what we create is ours, group included: fchown to that is a no-op we can skip.
            # (Below a setgid target the group is inherited, as the setgid bit is by the
            # directories we make, until their own mode is set after their content.)
            self.created_owner = (os.geteuid(), os.getegid())
        return fd

    # -- the walk -------------------------------------------------------------
    def run(self) -> RestoreResult:
        t0 = time.monotonic()
        parts = split_path(self.start)
        find_node(self.repo, self.root_tid, self.start)     # NotFound before touching target
        base = b"/".join(parts[:-1])                        # backup path that maps onto target
        self.base_len = len(base) + 1 if base else 0
        stack = [_Dir(base, self.open_target(), None, os.fsdecode(self.target), b"")]
        writers = []
        progress = self.progress
        ok = False
        try:
            for i in range(self.nwriters):
                c = _Counts()
                self.counts.append(c)
                self.queues.append(queue.SimpleQueue())
                t = threading.Thread(target=self.writer, args=(c, self.queues[i]), name=f"chunkrepo-restore-{i}",
                                     daemon=True)
                t.start()
                writers.append(t)
            next_report = time.monotonic() + _PROGRESS_EVERY
            # one read snapshot of the index for the single-chunk fast path
            with self.repo.index.read() as self.view:
                entries = walk(self.repo, self.root_tid, self.start)
                for entry, self.prefetched in prefetch(self.repo, entries, budget=_PREFETCH_BUDGET):
                    if self.fatal is not None:
                        raise self.fatal
                    self.entry(stack, entry)
                    if progress is not None and time.monotonic() >= next_report:
                        progress(self.snapshot())
                        next_report = time.monotonic() + _PROGRESS_EVERY
            ok = True
        finally:
            self.view = None
            if not ok:
                self.budget.abort()          # writers drop what is queued
            try:
                while stack:
                    self.leave(stack.pop())
            finally:
                for q in self.queues:
                    q.put(None)
                for t in writers:
                    t.join()
        if self.fatal is not None:
            raise self.fatal
        self.res = self.snapshot()
        if self._xattr_unsupported:
            self.res.errors.append(
                f"{os.fsdecode(self.target)}: the filesystem does not support extended attributes: "
                f"{self._xattr_unsupported} attributes not restored")
        self.res.elapsed = time.monotonic() - t0
        if progress is not None:
            progress(self.res)
        return self.res

    def leave(self, d: _Dir) -> None:
        """The main thread is done with d: finish it now, or its last writer will."""
        d.names = None
        with self.lock:
            d.left = True
            now = d.pending == 0
        if now:
            self.finish_dir(d)

    def finish_dir(self, d: _Dir) -> None:
        try:
            if d.node is not None:
                self.apply_fd(d.fd, d.node, d.shown, d.owner)
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
        if name in parent.names:
            # decided here, not by which thread creates the name first
            self.error(shown, "name already restored (duplicate name in the backup's record): skipped")
            self.res.skipped += 1
            return
        parent.names.add(name)
        pfd = parent.fd
        kind = node.kind
        try:
            if kind == REG:
                if link_to is not None and self.hard_link(stack, pfd, name, link_to, shown):
                    self.res.links += 1
                    return
                self.submit_file(parent, name, node, shown, link_to or path)
            elif kind == DIR:
                os.mkdir(name, 0o700, dir_fd=pfd)
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
                rel = parent.rel + b"/" + name if parent.rel else name
                stack.append(_Dir(path, fd, node, shown, rel, self.owner(node) if self.is_root else None))
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
        except OSError as e:
            if e.errno in _DISK_FULL:
                raise StorageError(f"{shown}: {e.strerror} (restore stopped)") from None
            if e.errno == errno.EEXIST:
                self.error(shown, "name already restored (duplicate name in the backup's record): skipped")
            else:
                self.error(shown, e.strerror or str(e))
            self.res.skipped += 1

    # -- regular files: the main thread's side --------------------------------
    def submit_file(self, parent: _Dir, name: bytes, node, shown: str, key: bytes) -> None:
        """Hand a regular file to the writers, with its content taken from the stream in order."""
        pf, self.prefetched = self.prefetched, None    # chunks read ahead, when this is their file
        job = _Job(parent, name, node, shown, self.owner(node) if self.is_root else None)
        chunks = None
        if node.sparse is None and len(node.chunks) == ID_SIZE:
            # most files are one chunk: skip ChunkFile's setup (same checks, fewer lookups)
            try:
                data = next(pf.data()) if pf is not None else self.repo.read_chunk(node.chunks, self.view)
                if len(data) != node.size:
                    raise StorageError(f"stored content has {len(data)} bytes, expected {node.size}")
            except ChunkrepoError as e:
                self.error(shown, f"{e}; the file was not restored")
                self.res.skipped += 1
                return
            job.data = data
        elif node.chunks or node.size:
            try:
                job.cf = ChunkFile(self.repo, node, shown.encode(_FS_ENCODING, "surrogateescape"), self.view,
                                   pf.sizes if pf is not None else None)
            except ChunkrepoError as e:
                msg = str(e)
                self.res.errors.append(f"{msg if msg.startswith(shown) else f'{shown}: {msg}'}; "
                                       "the file was not restored")
                self.res.skipped += 1
                return
            job.feed = queue.SimpleQueue()
            chunks = pf.data() if pf is not None else (
                self.repo.read_chunk(c, self.view) for c in node.chunk_ids())
        if node.nlink > 1:
            job.done = threading.Event()
            self._first.setdefault(key, (parent.key, name, parent.rel, job))
        self.budget.take(_JOB_COST + (len(job.data) if job.data is not None else 0))
        with self.lock:
            parent.pending += 1
        # a directory's files go to one writer (a run of _RUN at a time): two
        # writers creating names in one directory would queue on its lock
        d, w, n = self._turn
        if d is not parent or n >= _RUN:
            w, n = (w + 1) % len(self.queues), 0
        self._turn = (parent, w, n + 1)
        self.queues[w].put(job)
        if chunks is None:
            return
        feed = job.feed
        take = self.budget.take
        try:
            for data in chunks:
                take(len(data))
                if self.budget.aborted:
                    break     # a writer failed (or we stop): no point reading the rest
                feed.put(data)
            else:
                feed.put(_END)
                return
        except ChunkrepoError as e:
            feed.put(e)       # the writer reports it and removes the partial file
            return
        except BaseException:
            feed.put(_Aborted())
            raise
        feed.put(_Aborted())
        if self.fatal is not None:
            raise self.fatal

    def hard_link(self, stack: list, pfd: int, name: bytes, link_to: bytes, shown: str) -> bool:
        """Link to the restored first name; False when it must get its own data."""
        first = self._first.get(link_to)
        if first is None:
            return False     # first name outside the restored part, or it failed
        fkey, fname, frel, job = first
        if job is not None:
            job.done.wait()  # never link to a name whose content is not complete
            if not job.ok:
                del self._first[link_to]     # this copy becomes the first name
                return False
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

    # -- regular files: the writers' side -------------------------------------
    def writer(self, counts: _Counts, jobs: "queue.SimpleQueue") -> None:
        get = jobs.get
        while True:
            job = get()
            if job is None:
                return
            try:
                ok = self.write_job(job, counts)
            except BaseException as e:     # a bug: stop the restore with it, keep counting down
                self.fail(e)
                ok = False
            d = job.dir
            try:
                self.drain(job)
            finally:
                if ok:
                    counts.files += 1
                else:
                    counts.skipped += 1
                with self.lock:
                    d.pending -= 1
                    last = d.left and d.pending == 0
                if job.done is not None:
                    job.ok = ok
                    job.done.set()
                if last:
                    self.finish_dir(d)

    def drain(self, job: _Job) -> None:
        """Give back the budget of a finished job, taking what is left on its feed."""
        give = self.budget.give
        give(_JOB_COST + job.held + (len(job.data) if job.data is not None else 0))
        job.held = 0
        job.data = None
        feed, job.feed = job.feed, None
        if feed is not None:
            while True:
                item = feed.get()
                if item is _END or isinstance(item, BaseException):
                    break
                give(len(item))

    def write_job(self, job: _Job, counts: _Counts) -> bool:
        if self.budget.aborted:
            return False
        d, name, shown = job.dir, job.name, job.shown
        try:
            mode = stat.S_IMODE(job.node.mode)
            # created with its final mode when the umask keeps it, no chown will clear
            # set-id bits and no xattr needs write access later: one fchmod less per file
            exact = not mode & 0o7000 and not mode & self.umask and (not job.node.xattrs or mode & 0o200)
            fd = os.open(name, _FILE_FLAGS, mode if exact else 0o600, dir_fd=d.fd)
            done = False
            try:
                if job.data is not None:
                    data = job.data
                    k = os.write(fd, data)
                    counts.bytes += k
                    if k < len(data):
                        mv = memoryview(data)[k:]
                        while mv:
                            k = os.write(fd, mv)
                            counts.bytes += k
                            mv = mv[k:]
                elif job.cf is not None:
                    self.fill(fd, job, counts)
                self.apply_fd(fd, job.node, shown, job.owner, mode_set=exact)
                done = True
            except ChunkrepoError as e:
                msg = str(e)
                if not msg.startswith(shown):
                    msg = f"{shown}: {msg}"
                self.res.errors.append(f"{msg}; the partial file was removed")
            except _Aborted:
                pass
            finally:
                os.close(fd)
                if not done:
                    try:
                        os.unlink(name, dir_fd=d.fd)
                    except OSError:
                        pass
            return done
        except OSError as e:
            if e.errno in _DISK_FULL:
                self.fail(StorageError(f"{shown}: {e.strerror} (restore stopped)"))
            elif e.errno == errno.EEXIST:
                self.error(shown, "name already restored (duplicate name in the backup's record): skipped")
            else:
                self.error(shown, e.strerror or str(e))
            return False

    def chunks(self, job: _Job):
        """The chunks the main thread puts on job's feed, giving back each one's budget once written."""
        feed, give = job.feed, self.budget.give
        while True:
            item = feed.get()
            if job.held:
                give(job.held)
                job.held = 0
            if item is _END:
                job.feed = None
                return
            if isinstance(item, BaseException):
                job.feed = None
                raise item
            job.held = len(item)
            yield item

    def fill(self, fd: int, job: _Job, counts: _Counts) -> None:
        node, shown, cf = job.node, job.shown, job.cf
        sparse = node.sparse is not None
        total = 0
        write, pwrite = os.write, os.pwrite
        try:
            if sparse:
                for off, mv in cf.iter_data(self.chunks(job)):
                    while mv:
                        k = pwrite(fd, mv, off)
                        off += k
                        total += k
                        mv = mv[k:]
            else:
                for off, mv in cf.iter_data(self.chunks(job)):
                    if off != total:
                        raise StorageError(f"{shown}: stored content is not contiguous")
                    while mv:
                        k = write(fd, mv)
                        total += k
                        mv = mv[k:]
        except IndexError:   # more stored data than the extents say
            raise StorageError(f"{shown}: stored content does not match its extents") from None
        finally:
            counts.bytes += total
        expected = sum(e[1] for e in node.sparse) if sparse else node.size
        if total != expected:
            raise StorageError(f"{shown}: stored content has {total} bytes, expected {expected}")
        if sparse:
            os.ftruncate(fd, node.size)   # holes after the last extent


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o7777      # unknown: never trust the creation mode


def restore_tree(repo, root_tid: bytes, target, start="/",
                 progress: Optional[Callable[[RestoreResult], None]] = None) -> RestoreResult:
    """Recreate the backup whose root record is root_tid (or start below it) in target.

    See the module docstring for where entries land, what is refused (unsafe
    names are skipped and reported in result.errors, not raised) and how
    errors are reported.  Raises NotFound (start not in the backup),
    TargetNotEmpty, and StorageError on a full disk.  progress, if given, is
    called from this thread about every 0.2 s and once at the end with a
    RestoreResult of the running counts (files, bytes_written, ...).
    """
    return _Restorer(repo, root_tid, target, start, progress).run()
