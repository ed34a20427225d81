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
    path in the backup (and, when the target refused the entry, "cannot restore
    to TARGET/...: reason"), and the restore goes on.  A regular file whose content
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
    FIFOs, devices and hard links; regular files it gathers into batches
    (consecutive files, up to _BATCH_FILES or the repository's read batch of
    bytes).  A few worker threads take one batch at a time and do all the
    rest for its files: look their chunks up in the index (each worker in its
    own read snapshot, opened before the walk: a lookup releases the GIL, and
    on the walk's thread they held the walk back), read the chunks (one
    ranged read per run of neighbouring blobs), decompress and verify them,
    create, fill and finish each file relative to its parent's descriptor.
    One hand-off per batch, not per file or chunk, and the data never changes
    threads; os.open/os.write, zstd and blake3 release the GIL, so both cores
    work.  Files of _DIRECT_MIN bytes or more without holes are written with
    O_DIRECT (chunkrepo.direct_io): not through the page cache.  A directory keeps its descriptor open, and
    gets its metadata, once the main thread has left it *and* its last file
    is finished.  A hard link waits until its first name is complete (hard
    links between symlinks are kept too, as GNU tar keeps them).  What
    the queued batches count is bounded (_AHEAD; a file counts its bytes, at
    least _JOB_COST and at most one read run), which bounds the directories
    held open for their files; a worker holds one run of chunks (the read
    batch) at a time, so a big file does not hold back the files after it.

Processes
    Once a local restore has queued _PROCESSES_AFTER, the worker threads (two
    per process then) hand their batches to restore processes instead, which
    run do_batch with their own interpreter lock (ops/restore_procs.py); the
    threads keep the bookkeeping above.

Placement
    The target carries ext4's top-directory flag while the restore runs, and
    its own directories are made under a random name first
    (chunkrepo/placement.py): the restored tree gets block groups of its own.
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
from ..direct_io import DirectIO
from ..errors import ChunkrepoError, StorageError, TargetNotEmpty
from ..model.nodes import BLK, CHR, DIR, FIFO, REG, SOCK, SYMLINK
from ..placement import TopDirHint
from ..storage import LocalStorage
from .file_reader import ChunkFile, chunk_entries
from .read_snapshot import backup_views
from .traverse import find_node, split_path, walk
from .url_place import below, place, repo_place

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
    processes: int = 0        # restore processes that wrote files (restore_procs)

    def to_dict(self) -> dict:
        return {"files": self.files, "dirs": self.dirs, "links": self.links,
                "bytes_written": self.bytes_written, "skipped": self.skipped,
                "errors": list(self.errors), "elapsed": self.elapsed}


_WORKERS = 2              # threads that read, decompress, verify and write files (see docs/design.md)
_BATCH_FILES = 64         # files of one batch (a worker's unit of work)
_AHEAD = 16 << 20         # what the batches queued and not written count (how far the walk runs ahead)
_PROCESSES_AFTER = 16 << 20   # restore processes start once the batches queued count this much (restore_procs)
_JOB_COST = 32 << 10      # the least a queued file counts (the most: its bytes, up to one read run)
_PROGRESS_EVERY = 0.2     # seconds between progress calls
_DIRECT_MIN = 1 << 20     # files this big (not sparse) are written with O_DIRECT (direct_io)
_DIRECT_BLOCK = 4 << 20   # bytes per O_DIRECT write


class _Aborted(Exception):
    """The restore stops: a worker leaves the file it was writing (and removes it)."""


class _Budget:
    """Bytes of the batches handed to the workers and not yet written (only the main thread waits)."""

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
        self.pending = 0      # files handed to workers and not finished (under _Restorer.lock)
        self.left = False     # the main thread is done with it (under _Restorer.lock)


class _Job:
    """One regular file for a worker: where it goes, and its chunks."""

    __slots__ = ("dir", "name", "node", "shown", "owner", "ids", "entries", "done", "ok")

    def __init__(self, d: _Dir, name: bytes, node, shown: str, owner, ids: list):
        self.dir = d
        self.name = name
        self.node = node
        self.shown = shown
        self.owner = owner
        self.ids = ids          # its chunk ids in content order
        self.entries = None     # [(chunk id, BlobEntry)], looked up by the worker (None: failed)
        self.done = None        # Event, for the first name of hard links
        self.ok = False


class _BatchData:
    """The chunks of a batch's files, read on demand a run of neighbours at a time.

    get(i) reads the run that starts at chunk i (up to the repository's batch
    size, one ranged read per run of neighbouring blobs: BlobReader.fetch)
    unless i is in the run read last, and decodes chunk i; chunks are asked for
    in increasing order, and those of a file that failed are never read.
    Memory: one run, in the worker's reader's buffers: what get() returned is
    valid until the next run is read (a file's chunk is written before the next
    is asked for).
    """

    __slots__ = ("reader", "items", "run_bytes", "start", "end")

    def __init__(self, reader, items: list, run_bytes: int):
        self.reader = reader    # the worker's Repository.blob_reader()
        self.items = items
        self.run_bytes = run_bytes
        self.start = self.end = 0

    def get(self, i: int, out=None):
        """Chunk i's bytes, or the exception reading it raised.  out: where to decode a
        compressed chunk (BlobReader.decode)."""
        if not self.start <= i < self.end:
            items = self.items
            j, size = i + 1, items[i][1].raw_length
            while j < len(items) and j - i < _BATCH_FILES and size + items[j][1].raw_length <= self.run_bytes:
                size += items[j][1].raw_length
                j += 1
            self.reader.fetch(items[i:j])
            self.start, self.end = i, j
        try:
            return self.reader.decode(i - self.start, out)
        except (ChunkrepoError, OSError) as e:
            return e


class _Counts:
    """What one worker did (each worker has its own: no lock, no lost updates)."""

    __slots__ = ("files", "skipped", "bytes")

    def __init__(self):
        self.files = self.skipped = self.bytes = 0


class _Restorer:
    def __init__(self, repo, root_tid: bytes, target, start, progress=None, workers: Optional[int] = None,
                 backup_id: Optional[str] = None, processes_after: Optional[int] = -1):
        self.repo = repo
        self.root_tid = root_tid
        self.backup_id = backup_id
        self.target = os.fsencode(target)
        self.start = start
        self.res = RestoreResult()
        self.is_root = os.geteuid() == 0
        self.created_owner = None   # (uid, gid) every new entry gets, when certain
        self.now = time.time_ns()
        self.umask = _umask()
        self.progress = progress
        plan = repo.read_plan
        # on an object store a read waits milliseconds: as many workers as the plan's readers
        self.nworkers = max(1, workers or max(_WORKERS, plan.threads))
        # restore processes (restore_procs), for a local repository (a wrapped storage, such
        # as a test's fault injection, stays with the threads) unless turned off: two worker
        # threads per process, so that each process has its next batch while it answers one
        self.nprocs = 0
        self.procs_after = _PROCESSES_AFTER if processes_after == -1 else processes_after
        if (workers is None and self.procs_after is not None and type(repo.storage) is LocalStorage
                and self.nworkers > 1 and os.environ.get("CHUNKREPO_RESTORE_PROCESSES", "1") != "0"):
            self.nprocs, self.nworkers = self.nworkers, 2 * self.nworkers
        self.procs = None
        self.queued = 0
        self.run_bytes = max(plan.batch_bytes, 1)
        self._uids: dict = {}
        self._gids: dict = {}
        self._first: dict = {}    # backup path of a hard link's first name -> (parent key, name, rel dir, job or None)
        self._xattr_unsupported = 0
        self.lock = threading.Lock()           # _Dir.pending/left, _xattr_unsupported, fatal
        self.budget = _Budget(_AHEAD)
        self.jobs: "queue.SimpleQueue" = queue.SimpleQueue()    # batches for the workers
        self.batch: List[_Job] = []   # files of the batch being gathered (main thread)
        self.batch_cost = 0
        self.counts: List[_Counts] = []
        self.fatal: Optional[BaseException] = None   # a worker's reason to stop the restore
        self.direct = DirectIO(_DIRECT_BLOCK, keep=self.nworkers)

    # -- helpers --------------------------------------------------------------
    def error(self, shown: str, msg: str) -> None:
        self.res.errors.append(f"{shown}: {msg}")    # list.append: safe from any thread

    def create_error(self, shown: str, d: _Dir, name: bytes, e: OSError) -> None:
        """An entry the target refused: the message names where it was to go, which is
        where the problem is, next to its path in the backup."""
        where = os.fsdecode(os.path.join(self.target, d.rel, name))      # (rel b"": target/name)
        self.error(shown, f"cannot restore to {where}: {e.strerror or e}")

    def fail(self, exc: BaseException) -> None:
        """Stop the restore (from a worker): the main thread raises exc."""
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

        owner: (uid, gid) looked up already (workers get it from the main thread);
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
        """The running counts (main thread's plus workers')."""
        r = self.res
        s = RestoreResult(r.files, r.dirs, r.links, r.bytes_written, r.skipped, r.errors,
                          processes=len(self.procs.procs) if self.procs is not None else 0)
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
        # the walk's read snapshot of the index and one per worker (each looks its files'
        # chunks up in its own: a lookup lets the other threads take the GIL, and on the
        # walk's thread it held the walk back), opened together before anything is read
        # and kept until the workers are done: a forget and prune meanwhile cannot take
        # the backup's entries away, and prune keeps the packs they name
        with backup_views(self.repo, 1 + self.nworkers, self.root_tid, self.backup_id) as views:
            return self.run_in(views[0], views[1:])

    def run_in(self, view, worker_views: list) -> RestoreResult:
        t0 = time.monotonic()
        parts = split_path(self.start)
        find_node(self.repo, self.root_tid, self.start, view)     # NotFound before touching target
        base = b"/".join(parts[:-1])                        # backup path that maps onto target
        self.base_len = len(base) + 1 if base else 0
        stack = [_Dir(base, self.open_target(), None, os.fsdecode(self.target), b"")]
        hint = self.hint = TopDirHint(stack[0].fd)     # the restored tree's own block groups (placement.py)
        workers = []
        progress = self.progress
        ok = False
        try:
            for i, wview in enumerate(worker_views):
                c = _Counts()
                self.counts.append(c)
                t = threading.Thread(target=self.worker, args=(wview, c, i % self.nprocs if self.nprocs else None),
                                     name=f"chunkrepo-restore-{i}", daemon=True)
                t.start()
                workers.append(t)
            next_report = time.monotonic() + _PROGRESS_EVERY
            for entry in walk(self.repo, self.root_tid, self.start, view=view):
                if self.fatal is not None:
                    raise self.fatal
                self.entry(stack, entry)
                if progress is not None and time.monotonic() >= next_report:
                    progress(self.snapshot())
                    next_report = time.monotonic() + _PROGRESS_EVERY
            ok = True
        finally:
            if not ok:
                self.budget.abort()          # workers drop what is queued
            try:
                self.flush()                 # (its files count in their directories' pending)
                while stack:
                    self.leave(stack.pop())
            finally:
                for _ in workers:
                    self.jobs.put(None)
                for t in workers:
                    t.join()
                hint.close()
                if self.procs is not None:
                    if ok and self.fatal is None:
                        self.procs.close()
                    else:
                        self.procs.kill()
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
        """The main thread is done with d: finish it now, or its last worker will."""
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
                if len(stack) == 1:
                    self.hint.mkdir(name, 0o700, pfd)      # (placement.py)
                else:
                    os.mkdir(name, 0o700, dir_fd=pfd)
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
                rel = parent.rel + b"/" + name if parent.rel else name
                stack.append(_Dir(path, fd, node, shown, rel, self.owner(node) if self.is_root else None))
                self.res.dirs += 1
            elif kind == SYMLINK:
                if link_to is None or not self.hard_link(stack, pfd, name, link_to, shown):
                    os.symlink(node.target, name, dir_fd=pfd)
                    self.apply_at(pfd, name, node, shown, mode=False)
                    if node.nlink > 1:      # complete already: its links need not wait
                        self._first.setdefault(link_to or path, (parent.key, name, parent.rel, None))
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
                self.create_error(shown, parent, name, e)
            self.res.skipped += 1

    # -- regular files: the main thread's side --------------------------------
    def submit_file(self, parent: _Dir, name: bytes, node, shown: str, key: bytes) -> None:
        """Add a regular file to the batch being gathered (a worker looks its chunks up)."""
        ids = [] if not node.chunks else node.chunk_ids() if len(node.chunks) != ID_SIZE else [node.chunks]
        job = _Job(parent, name, node, shown, self.owner(node) if self.is_root else None, ids)
        if node.nlink > 1:
            job.done = threading.Event()
            self._first.setdefault(key, (parent.key, name, parent.rel, job))
        with self.lock:
            parent.pending += 1
        self.batch.append(job)
        # a worker holds at most one run of a file's chunks at a time: a big file costs
        # one run, and does not hold back the files after it until it is written
        self.batch_cost += max(_JOB_COST, min(node.size, self.run_bytes))
        if len(self.batch) >= _BATCH_FILES or self.batch_cost >= self.run_bytes:
            self.flush()

    def flush(self) -> None:
        """Hand the batch gathered so far to the workers (waiting while too much is queued)."""
        if self.batch:
            batch, cost = self.batch, self.batch_cost
            self.batch, self.batch_cost = [], 0
            self.budget.take(cost)
            self.jobs.put((batch, cost))
            self.queued += cost
            if self.nprocs and self.procs is None and self.queued >= self.procs_after:
                self.start_procs()

    def start_procs(self) -> None:
        from .restore_procs import RestoreProcs
        try:
            self.procs = RestoreProcs(self, self.nprocs)
        except StorageError:
            self.nprocs = 0          # the threads write on

    def hard_link(self, stack: list, pfd: int, name: bytes, link_to: bytes, shown: str) -> bool:
        """Link to the restored first name; False when it must get its own data."""
        first = self._first.get(link_to)
        if first is None:
            return False     # first name outside the restored part, or it failed
        fkey, fname, frel, job = first
        if job is not None:
            self.flush()     # (it may be in the batch being gathered)
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

    # -- regular files: the workers' side -------------------------------------
    def worker(self, view, counts: _Counts, proc=None) -> None:
        """view: this worker's own read snapshot of the index (opened before the walk).
        Once restore processes run (self.procs), a batch goes to process `proc` instead."""
        get = self.jobs.get
        reader = self.repo.blob_reader()
        while True:
            item = get()
            if item is None:
                return
            batch, cost = item
            try:
                procs = self.procs
                if procs is None or proc is None or self.budget.aborted:
                    self.do_batch(view, reader, batch, counts)
                    continue
                try:
                    oks = procs.run(proc, batch, counts)
                except BaseException as e:     # a restore process failed: stop with its reason
                    self.fail(e)
                    oks = [False] * len(batch)
                for job, ok in zip(batch, oks):
                    self.finish_job(job, ok, counts)
            finally:
                self.budget.give(cost)

    def do_batch(self, view, reader, batch: list, counts: _Counts) -> None:
        """Look the batch's chunks up, read them and write its files (finish_job for each)."""
        items = []
        for job in batch:
            self.look_up(view, job)
            items += job.entries or ()
        data = _BatchData(reader, items, self.run_bytes)
        first = 0       # index of the job's first chunk in data
        for job in batch:
            ok = False
            try:
                ok = job.entries is not None and not self.budget.aborted \
                    and self.write_job(job, data, first, counts)
            except BaseException as e:     # a bug: stop the restore with it, keep counting down
                self.fail(e)
            finally:
                first += len(job.entries or ())
                self.finish_job(job, ok, counts)

    def look_up(self, view, job: _Job) -> None:
        """job.entries: its chunks' index entries; None (and an error) when one is missing or lost."""
        try:
            job.entries = list(zip(job.ids, chunk_entries(view, job.ids, job.shown)))
        except ChunkrepoError as e:
            self.res.errors.append(f"{e}; the file was not restored")     # e names the file
        except BaseException as e:     # a bug (or the index failing): stop the restore with it
            self.fail(e)

    def finish_job(self, job: _Job, ok: bool, counts: _Counts) -> None:
        if ok:
            counts.files += 1
        else:
            counts.skipped += 1
        d = job.dir
        with self.lock:
            d.pending -= 1
            last = d.left and d.pending == 0
        if job.done is not None:
            job.ok = ok
            job.done.set()
        if last:
            self.finish_dir(d)

    def write_job(self, job: _Job, data: _BatchData, first: int, counts: _Counts) -> bool:
        d, name, node, shown = job.dir, job.name, job.node, job.shown
        whole = None
        if len(job.entries) == 1 and node.sparse is None and node.size < _DIRECT_MIN:
            # most files are one chunk: read it before creating the file, which a
            # chunk that cannot be read then never leaves behind (a big one is
            # decoded into the O_DIRECT buffer: fill_direct)
            whole = data.get(first)
            if isinstance(whole, BaseException):
                self.error(shown, f"{_reason(whole)}; the file was not restored")
                return False
            if len(whole) != node.size:
                self.error(shown, f"stored content has {len(whole)} bytes, expected {node.size}; "
                                  "the file was not restored")
                return False
        try:
            mode = stat.S_IMODE(node.mode)
            # created with its final mode when the umask keeps it, no chown will clear
            # set-id bits and no xattr needs write access later: one fchmod less per file
            exact = not mode & 0o7000 and not mode & self.umask and (not node.xattrs or mode & 0o200)
            fd = os.open(name, _FILE_FLAGS, mode if exact else 0o600, dir_fd=d.fd)
            done = False
            try:
                if whole is not None:
                    counts.bytes += _write_all(fd, whole)
                elif job.entries or node.size:
                    self.fill(fd, job, data, first, counts)
                self.apply_fd(fd, node, shown, job.owner, mode_set=exact)
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
                self.create_error(shown, d, name, e)
            return False

    def fill(self, fd: int, job: _Job, data: _BatchData, first: int, counts: _Counts) -> None:
        """Write a file of several chunks (or with holes) as its layout says (a big one
        without holes with O_DIRECT: fill_direct)."""
        node, shown = job.node, job.shown
        sparse = node.sparse is not None
        if not sparse and node.size >= _DIRECT_MIN:
            self.fill_direct(fd, job, data, first, counts)
            return
        cf = ChunkFile(self.repo, node, shown.encode(_FS_ENCODING, "surrogateescape"),
                       sizes=[e.raw_length for _, e in job.entries])
        total = 0
        try:
            for off, mv in cf.iter_data(_chunks(data, first, len(job.entries))):
                if self.budget.aborted:
                    raise _Aborted()
                if sparse:
                    k = _write_all(fd, mv, off)
                elif off != total:
                    raise StorageError(f"{shown}: stored content is not contiguous")
                else:
                    k = _write_all(fd, mv)
                total += k
        except IndexError:   # more stored data than the extents say
            raise StorageError(f"{shown}: stored content does not match its extents") from None
        finally:
            counts.bytes += total
        expected = sum(e[1] for e in node.sparse) if sparse else node.size
        if total != expected:
            raise StorageError(f"{shown}: stored content has {total} bytes, expected {expected}")
        if sparse:
            os.ftruncate(fd, node.size)   # holes after the last extent

    def fill_direct(self, fd: int, job: _Job, data: _BatchData, first: int, counts: _Counts) -> None:
        """Write a big file without holes with O_DIRECT, decoding each compressed chunk
        straight into the writer's aligned buffer when it fits there (no copy)."""
        w = self.direct.writer(fd)
        total = 0
        try:
            for i, (_, e) in enumerate(job.entries, first):
                if self.budget.aborted:
                    raise _Aborted()
                room = w.free_view(e.raw_length)
                item = data.get(i, room)
                if isinstance(item, BaseException):
                    raise item
                if room is not None and item.obj is room.obj:
                    w.advance(len(item))     # decoded in place
                else:
                    w.write(item)
                total += len(item)
            w.finish()
        finally:
            w.abort()
            counts.bytes += total
        if total != job.node.size:
            raise StorageError(f"{job.shown}: stored content has {total} bytes, expected {job.node.size}")


def _chunks(data: _BatchData, first: int, n: int):
    for i in range(first, first + n):
        item = data.get(i)
        if isinstance(item, BaseException):
            raise item
        yield item


def _write_all(fd: int, buf, offset: Optional[int] = None) -> int:
    """Write all of buf (at offset, if given); returns its length."""
    n = len(buf)
    k = os.write(fd, buf) if offset is None else os.pwrite(fd, buf, offset)
    if k < n:
        mv = memoryview(buf)
        while k < n:
            k += os.write(fd, mv[k:]) if offset is None else os.pwrite(fd, mv[k:], offset + k)
    return n


def _reason(e: BaseException) -> str:
    """An exception's message for the user (an OSError's strerror)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


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
                 progress: Optional[Callable[[RestoreResult], None]] = None,
                 backup_id: Optional[str] = None, processes_after: Optional[int] = -1) -> RestoreResult:
    """Recreate the backup whose root record is root_tid (or start below it) in target.

    See the module docstring for where entries land, what is refused (unsafe
    names are skipped and reported in result.errors, not raised) and how
    errors are reported.  Raises NotFound (start not in the backup),
    TargetNotEmpty, and StorageError on a full disk.  progress, if given, is
    called from this thread about every 0.2 s and once at the end with a
    RestoreResult of the running counts (files, bytes_written, ...).  A target inside
    the repository (or holding it) is refused before anything is written.
    backup_id (the backup root_tid is the root of): a backup forgotten and pruned
    since it was looked up raises read_snapshot.BackupRemoved before anything is written.
    """
    if not repo.remote:
        mine, there = repo_place(repo), place(os.fsdecode(target))
        if below(there.path, mine.path) is not None or below(mine.path, there.path) is not None:
            raise ChunkrepoError(f"restore target {os.fsdecode(target)} lies inside the repository "
                                 f"{repo.path} or holds it: refused, nothing was written")
    return _Restorer(repo, root_tid, target, start, progress, backup_id=backup_id,
                     processes_after=processes_after).run()
