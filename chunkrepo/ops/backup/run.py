"""The backup orchestrator: walk, decide borrow-or-read, commit."""

import concurrent.futures
import functools
import grp
import operator
import os
import pwd
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

from ...codec import records
from ...codec.hashing import hash_bytes
from ...errors import ChunkrepoError, IntegrityError
from ...model import BackupRecord, Node, Tree, node_from_stat
from ...model.nodes import DIR, REG
from ...storage import LocalStorage
from .exclude import Excludes
from .file_saver import FileSaver, read_with_retry, read_xattrs
from .reader_procs import ReaderProcs, stat_fields
from .tree_saver import Batch, PendingDir, PendingFile, TreeSaver
from ..snapshot.cachelink import CacheLinks     # snapshots: links into chunkrepo's cache

TRUST_GRANULARITY_NS = 1_000_000_000   # borg's racy-timestamp rule, at 1 s
_BATCH_FILES = 64
# the stat fields a directory entry records, in the same order from a Node and from an lstat
_NODE_STAT = operator.itemgetter(1, 2, 3, 6, 7, 8, 9, 10, 11)
_STAT = operator.attrgetter("st_mode", "st_uid", "st_gid", "st_size", "st_mtime_ns", "st_ctime_ns",
                            "st_ino", "st_dev", "st_nlink")
_NODE_OWNER = operator.itemgetter(4, 5)
_NODE_NAME = operator.itemgetter(0)
_BATCH_BYTES = 8 << 20


@dataclass
class BackupOptions:
    host: Optional[str] = None
    subset: Optional[str] = None
    excludes: Sequence[str] = ()
    one_file_system: bool = False
    workers: int = 2
    progress: Optional[Callable] = None
    listed_paths: bool = False     # paths come from --files-from: store exactly those
    clock: Callable[[], int] = time.time_ns
    # bytes queued for reading (a file counts 4 KiB at least) after which reader processes
    # take the batches over (reader_procs; None: threads only)
    processes_after: Optional[int] = 4 << 20


@dataclass
class BackupResult:
    id: str = ""
    files: int = 0
    dirs: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    bytes_done: int = 0          # content handled so far, borrowed or read (for progress)
    bytes_new: int = 0
    bytes_stored: int = 0
    files_borrowed: int = 0
    files_changed_during_backup: int = 0
    skipped: int = 0
    errors: List[str] = field(default_factory=list)
    elapsed: float = 0.0
    parent: Optional[str] = None
    reader_processes: int = 0    # how many reader processes read (0: the reader threads alone)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Names:
    """uid/gid -> name, cached (getpwuid is a file parse per call)."""

    def __init__(self):
        self._u, self._g, self._o = {}, {}, {}

    def user(self, uid: int) -> str:
        n = self._u.get(uid)
        if n is None:
            try:
                n = pwd.getpwuid(uid).pw_name
            except KeyError:
                n = ""
            self._u[uid] = n
        return n

    def owner(self, uid: int, gid: int) -> tuple:
        o = self._o.get((uid, gid))
        if o is None:
            o = self._o[(uid, gid)] = (self.user(uid), self.group(gid))
        return o

    def group(self, gid: int) -> str:
        n = self._g.get(gid)
        if n is None:
            try:
                n = grp.getgrgid(gid).gr_name
            except KeyError:
                n = ""
            self._g[gid] = n
        return n


def _chunks_present(view, chunks: bytes) -> bool:
    return all(view.has_chunk(chunks[i:i + 32]) for i in range(0, len(chunks), 32))


def _selection(paths: List[bytes], listed: bool) -> Optional[dict]:
    """Nested dict of the path components to back up; None means 'everything below'.

    Given paths are walked recursively; listed paths (--files-from, as `find`
    prints them) name exactly the entries to store: a listed directory
    contributes itself and only those of its entries that are listed too.
    """
    sel: dict = {}
    for p in paths:
        parts = [c for c in p.split(b"/") if c]
        if not parts:
            if not listed:
                return None
            continue
        d: Optional[dict] = sel
        for c in parts[:-1]:
            if d.get(c, {}) is None:    # an ancestor is already taken whole
                d = None
                break
            d = d.setdefault(c, {})
        if d is None:
            continue
        last = parts[-1]
        if listed:
            d.setdefault(last, {} if os.path.isdir(p) and not os.path.islink(p) else None)
        else:
            d[last] = None
    return sel


class Backup:
    def __init__(self, repo, session, opts: BackupOptions):
        self.repo = repo
        self.session = session
        self.opts = opts
        self.res = BackupResult()
        self.names = _Names()
        self.all_xattrs = os.geteuid() == 0
        self.saver = FileSaver(session, repo.config.chunker, help=self._help)
        self.trees = TreeSaver(session, self.submit_batch)
        self.hardlinks: dict = {}    # (dev, ino) -> (its first node, how many more names it has)
        self._borrowed: list = []    # per directory being scanned: borrowed files to verify
        with repo.index.read() as v:
            # A backup's chunks keep their entries while it holds references to them, unless
            # check --repair found their stored copy gone (the lost db).  The writer lock
            # keeps that set as it is for this whole backup: with nothing lost, no borrowed
            # chunk can be missing and the per-chunk check is skipped.
            self.verify_borrowed = v.lost_count() > 0
        self.batch = Batch()
        self.workers = max(1, opts.workers)
        self.inflight = threading.BoundedSemaphore(2 * self.workers + 2)
        self.pool = concurrent.futures.ThreadPoolExecutor(self.workers, "chunkrepo-read")
        # reader processes, once this much is queued: for a local repository (a wrapped
        # storage, such as a test's fault injection, stays with the threads), unless turned off
        self.procs: Optional[ReaderProcs] = None
        self.procs_after = opts.processes_after if (
            self.workers > 1 and type(repo.storage) is LocalStorage
            and os.environ.get("CHUNKREPO_READER_PROCESSES", "1") != "0") else None
        self.queued = 0
        self._batches = 0            # submitted and not done: fewer than the workers, one is idle
        self.trust_before = 0
        self.excludes = list(opts.excludes)
        self.own_repo = os.fsencode(repo.path)
        self.cache_links = CacheLinks(repo)      # snapshots hook (see _cache_link)
        self._lock = threading.Lock()
        self._last_progress = 0.0
        # the walk counts a file and its lstat size when it queues it; a reader that ends up
        # storing another size (a retry), the previous version or nothing corrects the counts
        # here (under _lock), and run() applies them once the readers are done
        self._files_dropped = 0
        self._size_delta = 0

    # -- helpers --------------------------------------------------------------
    def error(self, path: bytes, msg: str) -> None:
        with self._lock:
            self.res.errors.append(f"{os.fsdecode(path)}: {msg}")

    def excluded(self, path: bytes, name: bytes) -> bool:
        if path == self.own_repo:
            return True      # never back up the repository into itself
        if not self.excludes:
            return False
        return self.exclude_rules.matches(path, name)

    @functools.cached_property
    def exclude_rules(self) -> Excludes:
        return Excludes(self.excludes)

    def node(self, name: bytes, st, **kw) -> Node:
        return node_from_stat(name, st, self.names.user(st.st_uid), self.names.group(st.st_gid), **kw)

    def _progress(self, force: bool = False) -> None:
        if self.opts.progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress > 0.2:
            self._last_progress = now
            self.opts.progress(self.res)   # the callee serializes calls from several threads

    # -- the walk -------------------------------------------------------------
    def prev_listing(self, prev: Optional[Node]):
        """(entries, entries by name) of the same directory in the previous backup."""
        if prev is None or prev.subtree is None:
            return None, {}
        try:
            entries = self.repo.read_tree(prev.subtree).entries
        except IntegrityError:
            return None, {}    # a lost record (check --repair): back the directory up afresh
        return entries, dict(zip(map(_NODE_NAME, entries), entries))

    def scan_dir(self, path: bytes, name: bytes, st, prev: Optional[Node], selection, top_dev: int):
        prev_entries, prev_children = self.prev_listing(prev)
        children: list = []
        dnode = self.node(name, st, xattrs=read_xattrs(path, self.all_xattrs))
        self.res.dirs += 1
        if selection is None:
            try:
                with os.scandir(path) as it:
                    listing = sorted((e.name, e) for e in it)
            except OSError as e:
                self.error(path, f"cannot list directory: {e.strerror}")
                self.res.skipped += 1
                listing = []
        else:
            listing = [(n, None) for n in sorted(selection)]
        base = path if path.endswith(b"/") else path + b"/"
        self._borrowed.append([])
        # the fast path of an unchanged host: a regular file (one link) whose every recorded
        # stat field and owner name equal its previous entry's, old enough to be trusted,
        # is that very entry (no new object; same_stat and borrow, field for field)
        fast = prev_children and selection is None and not self.verify_borrowed
        trust_before, owner, own_repo, excludes = (self.trust_before, self.names.owner, self.own_repo,
                                                   self.excludes)
        nfast = fast_bytes = 0
        # taken from the end of the reversed listing: an entry (and the stat result it
        # caches) goes once handled, not when the whole directory is done (a directory of
        # 12k files held ~6 MiB of them through the backup of its subdirectories)
        listing.reverse()
        pop = listing.pop
        while listing:
            cname, entry = pop()
            cpath = base + cname
            if (excludes or cpath == own_repo) and self.excluded(cpath, cname):
                continue
            try:
                cst = entry.stat(follow_symlinks=False) if entry is not None else os.lstat(cpath)
            except FileNotFoundError:
                self.error(cpath, "vanished before it could be read")
                self.res.skipped += 1
                continue
            except OSError as e:
                self.error(cpath, e.strerror or str(e))
                self.res.skipped += 1
                continue
            prevc = prev_children.get(cname)
            if (fast and prevc is not None and _NODE_STAT(prevc) == _STAT(cst) and prevc[11] == 1
                    and prevc[1] & 0o170000 == 0o100000 and prevc[7] < trust_before
                    and _NODE_OWNER(prevc) == owner(cst.st_uid, cst.st_gid)):
                children.append(prevc)
                nfast += 1
                fast_bytes += prevc[6]
                continue
            sub = selection[cname] if selection is not None else None
            child = self.scan_entry(cpath, cname, cst, prevc, sub,
                                    top_dev if selection is None else cst.st_dev,
                                    full=selection is None or sub is None)
            if child is not None:
                children.append(child)
        if nfast:
            res = self.res
            res.files += nfast
            res.files_borrowed += nfast
            res.bytes_total += fast_bytes
            res.bytes_done += fast_bytes
        self._verify_borrowed(children, self._borrowed.pop())
        pd = PendingDir(dnode, children, prev, prev_entries)
        self.trees.add(pd)
        self._progress()
        return pd

    def scan_entry(self, path, name, st, prev, sub, top_dev, full):
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            if self.opts.one_file_system and full and st.st_dev != top_dev:
                self.res.dirs += 1
                return self.node(name, st, subtree=self.session.add_tree(Tree([])))
            return self.scan_dir(path, name, st, prev if prev is not None and prev.kind == DIR else None,
                                 sub if not full else None, top_dev)
        if stat.S_ISREG(mode):
            return self.scan_file(path, name, st, prev)
        if stat.S_ISSOCK(mode):
            self.error(path, "is a socket: skipped")
            self.res.skipped += 1
            return None
        if prev is not None and self.same_stat(prev, st) and prev.rdev == (
                st.st_rdev if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 0):
            self.res.files += 1
            return prev    # unchanged symlink, fifo or device (ctime covers target and xattrs)
        kw = {"xattrs": read_xattrs(path, self.all_xattrs)}
        if stat.S_ISLNK(mode):
            try:
                kw["target"] = os.readlink(path)
            except OSError as e:
                self.error(path, e.strerror or str(e))
                self.res.skipped += 1
                return None
        self.res.files += 1
        node = self.node(name, st, **kw)
        if stat.S_ISLNK(mode):
            return self._cache_link(path, node)
        return node

    def _cache_link(self, path: bytes, node: Node) -> Node:
        """Snapshots hook: a symlink into chunkrepo's cache (a restored or cloned snapshot) is
        stored as the regular file it stands for, with the chunks the repository already has."""
        as_file = self.cache_links.file_node(path, node)
        if as_file is None:
            edited = self.cache_links.edited_object(path, node)   # written through: read it
            if edited is None:
                return node
            self.res.bytes_total += edited[1].st_size
            return self.queue_read(edited[0], node.name, edited[1], None)
        self.res.files_borrowed += 1
        self.res.bytes_total += as_file.size
        self.res.bytes_done += as_file.size
        return as_file

    def scan_file(self, path, name, st, prev):
        self.res.files += 1
        self.res.bytes_total += st.st_size
        key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
        if key is not None and key in self.hardlinks:
            first, left = self.hardlinks[key]
            if left > 1:
                self.hardlinks[key] = (first, left - 1)
            else:    # its last name: nothing more to share it with (a host's hard links do not pile up)
                del self.hardlinks[key]
            if isinstance(first, PendingFile):
                return PendingFile(first.batch, first.index, alias=name)
            return first._replace(name=name) if first is not None else None
        node = self.borrow(name, st, prev, verify_now=key is not None)
        if node is not None:
            self.res.files_borrowed += 1
            self.res.bytes_done += st.st_size
            if key is None:    # its chunks are checked with the rest of the directory's
                self._borrowed[-1].append((node, path, st, prev))
        else:
            node = self.queue_read(path, name, st, prev)
        if key is not None:
            self.hardlinks[key] = (node, st.st_nlink - 1)    # the names still to come
        return node

    def borrow(self, name, st, prev, verify_now: bool) -> Optional[Node]:
        """The previous chunk list, when nothing says the file changed."""
        if (prev is None or prev.kind != REG or prev.size != st.st_size
                or prev.mtime_ns != st.st_mtime_ns or prev.ctime_ns != st.st_ctime_ns
                or prev.ino != st.st_ino or prev.mtime_ns >= self.trust_before):
            return None
        if verify_now and self.verify_borrowed:
            with self.repo.index.read() as v:
                if not _chunks_present(v, prev.chunks):
                    return None    # backshift's Missing_chunk: read the file again
        if self.same_stat(prev, st):
            return prev        # the very same entry: no new object
        return self.node(name, st, xattrs=prev.xattrs, chunks=prev.chunks, sparse=prev.sparse)

    def same_stat(self, prev: Node, st) -> bool:
        """Every recorded stat field (and the owner names) equal: the entry can be reused."""
        return (prev.mode == st.st_mode and prev.mtime_ns == st.st_mtime_ns
                and prev.ctime_ns == st.st_ctime_ns and prev.ino == st.st_ino
                and prev.uid == st.st_uid and prev.gid == st.st_gid and prev.nlink == st.st_nlink
                and prev.dev == st.st_dev and (prev.size == st.st_size or not stat.S_ISREG(st.st_mode))
                and prev.user == self.names.user(st.st_uid) and prev.group == self.names.group(st.st_gid))

    def _verify_borrowed(self, children: list, borrowed: list) -> None:
        """Every borrowed chunk must still be in the index (one snapshot per
        directory); a file whose chunk is missing is read again (Missing_chunk).
        Only while something is lost (see verify_borrowed)."""
        if not borrowed or not self.verify_borrowed:
            return
        with self.repo.index.read() as v:
            missing = [b for b in borrowed if not _chunks_present(v, b[0].chunks)]
        for node, path, st, prev in missing:
            i = next(i for i, c in enumerate(children) if c is node)
            children[i] = self.queue_read(path, node.name, st, prev)
            self.res.files_borrowed -= 1
            self.res.bytes_done -= st.st_size

    def queue_read(self, path, name, st, prev) -> PendingFile:
        batch = self.batch
        batch.items.append((path, name, st, prev))
        batch.nbytes += st.st_size
        pf = PendingFile(batch, len(batch.items) - 1)
        if len(batch.items) >= _BATCH_FILES or batch.nbytes >= _BATCH_BYTES:
            self.submit_batch()
        return pf

    def submit_batch(self) -> None:
        batch = self.batch
        if not batch.items:
            return
        self.batch = Batch()
        self.inflight.acquire()
        with self._lock:
            self._batches += 1
        if self.procs is None and self.procs_after is not None:
            self.queued += sum(max(it[2].st_size, 4096) for it in batch.items)
            if self.queued >= self.procs_after:
                try:
                    self.procs = ReaderProcs(self.session, self.repo.path, self.repo.config.chunker,
                                             self.all_xattrs, self.workers)
                except ChunkrepoError:
                    self.procs_after = None      # no process could start: the threads read on
        if self.procs is not None:
            keep = [(path, name, st.st_size, prev) for path, name, st, prev in batch.items]
            batch.future = self.procs.submit([(path, stat_fields(st)) for path, _, st, _ in batch.items],
                                             lambda statuses: [self._apply(s, *k) for s, k in zip(statuses, keep)],
                                             batch.nbytes)
        else:
            batch.future = self.pool.submit(self._read_batch, batch.items)
        batch.items = None    # the worker's until read: the stat results go with it, not with the dir
        batch.future.add_done_callback(self._batch_done)

    def _batch_done(self, _future) -> None:
        with self._lock:
            self._batches -= 1
        self.inflight.release()

    def _help(self, fn, *args) -> Optional[concurrent.futures.Future]:
        """FileSaver's help: fn run by a pool thread that has no batch to read, if any."""
        if self._batches >= self.workers:
            return None
        return self.pool.submit(fn, *args)

    # -- worker side ----------------------------------------------------------
    def _read_batch(self, batch) -> list:
        return [self._read_one(*item) for item in batch]

    def _read_one(self, path, name, st, prev) -> Optional[Node]:
        return self._apply(read_with_retry(self.saver, path, st, self.all_xattrs), path, name, st.st_size, prev)

    def _apply(self, status: tuple, path: bytes, name: bytes, counted: int, prev) -> Optional[Node]:
        """The entry of a queued file from read_with_retry's status (counted: the size
        the walk added to bytes_total for it)."""
        kind, discarded, what = status
        if discarded:
            with self._lock:
                self.res.bytes_read += discarded
        if kind == "ok":
            fst, chunks, sparse, nread, xattrs = what
            self._stored(nread, fst.st_size, counted)
            return self.node(name, fst, xattrs=xattrs, chunks=chunks, sparse=sparse)
        if kind == "changed":
            return self._gave_up(path, "changed during the backup", prev, counted)
        self.error(path, "vanished before it could be read" if kind == "vanished" else what)
        self._not_stored(counted, skipped=True)
        return None

    def _stored(self, nread: int, size: int, counted: int) -> None:
        """A queued file was read and stored with this size (counted: the walk's)."""
        with self._lock:
            self.res.bytes_read += nread
            self.res.bytes_done += size
            self._size_delta += size - counted
        self._progress()

    def _gave_up(self, path, problem: str, prev: Optional[Node], counted: int) -> Optional[Node]:
        """A queued file that could not be read whole after a retry: the previous backup's
        version if there is one, else nothing; reported, and out of the counts."""
        with self._lock:
            self.res.files_changed_during_backup += 1
        if prev is not None and prev.kind == REG:
            self.error(path, f"{problem}: kept the version of the previous backup")
            with self._lock:
                self._size_delta += prev.size - counted
            return prev
        self.error(path, f"{problem}: not stored")
        self._not_stored(counted)
        return None

    def _not_stored(self, counted: int, skipped: bool = False) -> None:
        """A queued file the backup will not hold after all: out of its counts."""
        with self._lock:
            self.res.skipped += skipped
            self._files_dropped += 1
            self._size_delta -= counted

    # -- top level ------------------------------------------------------------
    def start(self, parent: Optional[BackupRecord]) -> Optional[Node]:
        """Trust rule from the parent backup; its root as the previous '/' (or None)."""
        if parent is None:
            return None
        self.trust_before = parent.start_ns - TRUST_GRANULARITY_NS
        return Node(b"", stat.S_IFDIR, 0, 0, "", "", 0, 0, 0, 0, 0, 0, 0, b"", None, b"",
                    bytes.fromhex(parent.root), None)

    def run(self, paths: List[bytes], parent: Optional[BackupRecord]) -> Node:
        selection = _selection(paths, self.opts.listed_paths)
        prev_root = self.start(parent)
        try:
            root_st = os.lstat(b"/")
            pd = self.scan_dir(b"/", b"", root_st, prev_root, selection, root_st.st_dev)
            self.trees.finish_all()
            if self.procs is not None:
                self.procs.close()
                self.res.reader_processes = len(self.procs.procs)
        finally:
            self.pool.shutdown(wait=True)
            if self.procs is not None:
                self.procs.kill()
        self.apply_corrections()
        return pd.result

    def apply_corrections(self) -> None:
        """Once the readers are done: the counts of what the backup holds (see __init__)."""
        self.res.files -= self._files_dropped
        self.res.bytes_total += self._size_delta


def find_parent(repo, host: str, subset: str) -> Optional[BackupRecord]:
    cands = [r for r in repo.list_backups()
             if r.host == host and r.subset == subset and r.end_ns is not None and r.kind == "backup"]
    return cands[-1] if cands else None


def run_backup(repo, paths: Sequence[str], opts: BackupOptions) -> BackupResult:
    """Back up paths into repo; the caller gets counts and the new backup's id."""
    t0 = time.monotonic()
    abspaths, missing = [], []
    for p in paths:
        ap = os.path.normpath(os.path.abspath(os.fsencode(p)))
        if ap not in abspaths and ap not in missing:     # /x/ and /x are one path
            (abspaths if os.path.lexists(ap) else missing).append(ap)
    if missing and (not opts.listed_paths or not abspaths):
        raise ChunkrepoError(f"{os.fsdecode(missing[0])}: no such file or directory")
    host = opts.host or socket.gethostname()
    subset = opts.subset if opts.subset is not None else ",".join(sorted(os.fsdecode(p) for p in abspaths))
    start_ns = opts.clock()
    with repo.write_session() as session:
        parent = find_parent(repo, host, subset)
        job = Backup(repo, session, opts)
        root = job.run(abspaths, parent)
        res = job.res
        for m in missing:     # listed by --files-from but gone by now
            res.errors.append(f"{os.fsdecode(m)}: vanished before it could be read")
            res.skipped += 1
        commit_record(session, res, parent, BackupRecord(
            "", host, subset, [os.fsdecode(p) for p in abspaths], start_ns, opts.clock(), root.subtree.hex()))
    res.elapsed = time.monotonic() - t0
    job._progress(force=True)
    return res


def commit_record(session, res: BackupResult, parent: Optional[BackupRecord], rec: BackupRecord) -> None:
    """Fill rec's stats from res, give it its id and commit it (the last step of a backup)."""
    res.bytes_new = session.bytes_new
    res.bytes_stored = session.bytes_stored
    res.parent = parent.id if parent else None
    stats = {k: v for k, v in res.to_dict().items()
             if k not in ("id", "errors", "elapsed", "parent", "bytes_done", "reader_processes")}
    stats["errors"] = len(res.errors)
    rec.stats = stats
    rec.id = hash_bytes(records.encode_json(rec.to_dict()))[:16].hex()
    session.commit_backup(rec)
    res.id = rec.id
