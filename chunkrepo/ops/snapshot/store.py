"""Taking a snapshot (a backup record of kind "snapshot") and finding it again by digest.

A snapshot's tree is laid out like a backup's: the root record "/" holds the parents of the
snapshotted path (with their real metadata) down to the file or directory itself.  A directory
snapshot's root record also holds a regular file ".chunkrepo-manifest": the canonical manifest
(ops.snapshot.manifest) whose BLAKE3 is the directory's digest, kept alive by the reference
counts like any file.  The record's `snapshot` field says what was taken (docs/snapshots.md).
A directory snapshot leaves out the repository and the local cache wherever it meets them; a
path that vanishes or changes while it is read fails the whole snapshot ("changed ... try
again"): a digest names one state of the tree, never one with holes.

The LMDB db `digests` maps a content digest to msgpack [type, backup id, path in the tree]
("f" for every file of every snapshot, "d" for a directory snapshot), plus a marker key
b"snapshot:" + backup id for each snapshot record indexed.  It is only a shortcut: lookups that
miss it (or hit a forgotten record) fall back to a scan of the snapshot records, and every
snapshot write session indexes the stored snapshot records that lack their marker.
"""

import datetime
import errno
import grp
import os
import pwd
import socket
import stat
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, NamedTuple, Optional, Tuple

import msgpack

from ...codec import records
from ...codec.hashing import hash_bytes, new_hasher
from ...errors import AmbiguousId, ChunkrepoError, IntegrityError, NotFound, RepoLocked
from ...model import BackupRecord, Node, Tree, node_from_stat
from ...model.nodes import DIR, REG
from ..backup.file_saver import FileSaver, same_object
from ..file_reader import ChunkFile
from ..traverse import find_node, walk
from ..url_place import below
from . import manifest as mf
from .cache import LocalCache, is_digest
from .place import is_hardlink_to

MANIFEST_NAME = b".chunkrepo-manifest"
SUBSET_PREFIX = "snapshot:"
TRUST_GRANULARITY_NS = 1_000_000_000
LINK_FILE_MODE = 0o644          # a link into the cache stands for a file with this mode
_MARK = b"snapshot:"
_O_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
LOCK_POLL_S = 0.25             # how often snap(wait=...) tries the writer lock again


# -- errors about the snapshotted tree ----------------------------------------------
def _changed(path: bytes) -> ChunkrepoError:
    return ChunkrepoError(f"{os.fsdecode(path)}: changed while it was being snapshotted; try again")


def _source_error(e: OSError, path: bytes) -> Exception:
    """An OSError met on the snapshotted tree: a path that vanished or changed type since it
    was listed is "changed" (pipelines retry on that); any other names the path as text."""
    if isinstance(e, (FileNotFoundError, NotADirectoryError)) or e.errno == errno.ELOOP:
        return _changed(path)
    return type(e)(e.errno, e.strerror, os.fsdecode(path))


# -- workspace ------------------------------------------------------------------
def find_workspace(start) -> Optional[str]:
    """The nearest directory at or above start with a pyproject.toml, else the git root, else None."""
    start = os.path.abspath(os.fspath(start))
    d = start
    while True:
        if os.path.isfile(os.path.join(d, "pyproject.toml")):
            return d
        up = os.path.dirname(d)
        if up == d:
            break
        d = up
    d = start
    while True:
        if os.path.exists(os.path.join(d, ".git")):
            return d
        up = os.path.dirname(d)
        if up == d:
            return None
        d = up


def relpath_in(path: str, workspace: Optional[str]) -> Optional[str]:
    if workspace is None:
        return None
    rel = os.path.relpath(path, workspace)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return None
    return rel


# -- results --------------------------------------------------------------------
@dataclass
class SnapshotResult:
    id: str
    digest: str
    type: str                   # "file" or "dir"
    name: str
    relpath: Optional[str]
    original_path: str
    time_ns: int
    content_length: int
    stats: dict = field(default_factory=dict)
    files: List[Tuple[str, str, int]] = field(default_factory=list)   # (relative path, digest, size)
    warnings: List[str] = field(default_factory=list)


class Located(NamedTuple):
    type: str                  # "file" or "dir"
    digest: str
    record: BackupRecord
    path: bytes                # the file's or directory's path in the record's tree
    node: Node


class _Names:
    def __init__(self):
        self._u, self._g = {}, {}

    def user(self, uid):
        if uid not in self._u:
            try:
                self._u[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._u[uid] = ""
        return self._u[uid]

    def group(self, gid):
        if gid not in self._g:
            try:
                self._g[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._g[gid] = ""
        return self._g[gid]


class _HashingReader:
    """readinto over a file descriptor, hashing every byte read (FileSaver's reader protocol)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.h = new_hasher()
        self.total = 0

    def readinto(self, mv) -> int:
        n = os.readv(self.fd, [mv])
        if n:
            self.h.update(mv[:n])
            self.total += n
        return n


# -- stored content of a digest ---------------------------------------------------
def stored_content(repo, digest: str, cache: Optional[LocalCache] = None):
    """(size, chunks, sparse) of a file digest whose chunks are all in the repository, or None."""
    info = None
    with repo.index.read() as v:
        raw = v.digest(bytes.fromhex(digest))
        if raw is not None:
            row = msgpack.unpackb(raw, raw=False)
            if row[0] == "f" and len(row) >= 6 and v.backup(row[1]) is not None:
                info = (row[3], row[4], row[5])       # no tree walk: links are met by the thousand
    if info is None:
        loc = _locate_indexed(repo, digest)
        if loc is not None and loc.type == "file":
            info = (loc.node.size, loc.node.chunks, loc.node.sparse)
    if info is None and cache is not None:
        info = cache.note(digest)
    if info is None:
        return None
    chunks = info[1]
    with repo.index.read() as v:
        if not all(v.has_chunk(chunks[i:i + 32]) for i in range(0, len(chunks), 32)):
            return None
    return info


# -- taking a snapshot --------------------------------------------------------------
class _Snapshotter:
    def __init__(self, repo, session, cache: LocalCache, prev: Optional[dict], trust_before: int,
                 left_out: FrozenSet[Tuple[int, int]] = frozenset()):
        self.repo = repo
        self.left_out = left_out         # (st_dev, st_ino) of directories never snapshotted
        self.session = session
        self.cache = cache
        self.saver = FileSaver(session, repo.config.chunker)
        self.names = _Names()
        self.prev = prev or {}
        self.trust_before = trust_before
        self.entries: list = []          # manifest rows
        self.files: list = []            # (rel path bytes, digest hex, size)
        self.hardlinks: dict = {}
        self.warnings: list = []
        self.stats = {"files": 0, "dirs": 0, "bytes_total": 0, "bytes_read": 0, "files_borrowed": 0,
                      "files_linked": 0, "skipped": 0}

    def node(self, name: bytes, st, **kw) -> Node:
        return node_from_stat(name, st, self.names.user(st.st_uid), self.names.group(st.st_gid), **kw)

    def read_file(self, path: bytes, name: bytes, lst, follow: bool) -> Tuple[Node, str]:
        for _attempt in (1, 2):
            try:
                fd = os.open(path, _O_FLAGS | (0 if follow else os.O_NOFOLLOW))
            except OSError as e:
                raise _source_error(e, path) from None
            try:
                fst = os.fstat(fd)
                if not follow and not same_object(lst, fst):
                    continue
                if not stat.S_ISREG(fst.st_mode):
                    raise ChunkrepoError(f"{os.fsdecode(path)}: not a regular file")
                reader = _HashingReader(fd)
                chunks = self.saver._store_stream(reader, fst.st_size)
                after = os.fstat(fd)
            finally:
                os.close(fd)
            if (reader.total == fst.st_size and after.st_size == fst.st_size
                    and after.st_mtime_ns == fst.st_mtime_ns and after.st_ctime_ns == fst.st_ctime_ns):
                self.stats["bytes_read"] += reader.total
                return self.node(name, fst, chunks=chunks), reader.h.hexdigest()
        raise _changed(path)

    def cache_link(self, path: bytes, name: bytes, lst) -> Optional[Tuple[Node, str]]:
        """A symlink into chunkrepo's cache: the content it names, without reading it."""
        try:
            target = os.readlink(path)
        except OSError:
            return None
        d = self.cache.digest_of_link_target(path, target)
        if d is None:
            return None
        edited = self.cache.changed(d)       # written through a link: what the link shows is read
        info = None if edited else stored_content(self.repo, d, self.cache)
        if info is not None:
            size, chunks, sparse = info
            node = self.node(name, lst, chunks=chunks, sparse=sparse)
            node = node._replace(mode=stat.S_IFREG | LINK_FILE_MODE, size=size, nlink=1)
            self.stats["files_linked"] += 1
            return node, d
        if edited or self.cache.has(d):     # content the repository lacks, or edited: read the object
            obj = self.cache.object_path(d)
            node, got = self.read_file(os.fsencode(obj), name, None, follow=True)
            return node._replace(mode=stat.S_IFREG | LINK_FILE_MODE, nlink=1), got
        raise ChunkrepoError(f"{os.fsdecode(path)}: links to content that is neither in the cache nor "
                             f"in the repository (a --no-download clone of another repository?)")

    def borrow(self, rel: bytes, name: bytes, st) -> Optional[Tuple[Node, str]]:
        p = self.prev.get(rel)
        if p is None:
            return None
        prev, digest = p
        if (prev.kind != REG or prev.size != st.st_size or prev.mtime_ns != st.st_mtime_ns
                or prev.ctime_ns != st.st_ctime_ns or prev.ino != st.st_ino
                or prev.mtime_ns >= self.trust_before):
            return None
        c = prev.chunks
        with self.repo.index.read() as v:
            if not all(v.has_chunk(c[i:i + 32]) for i in range(0, len(c), 32)):
                return None
        self.stats["files_borrowed"] += 1
        return self.node(name, st, chunks=prev.chunks, sparse=prev.sparse), digest

    def file_entry(self, path: bytes, rel: bytes, name: bytes, st) -> Tuple[Node, str]:
        key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
        if key is not None and key in self.hardlinks:
            node, d = self.hardlinks[key]
            node = self.node(name, st, chunks=node.chunks, sparse=node.sparse)
        else:
            node, d = self.borrow(rel, name, st) or self.read_file(path, name, st, follow=False)
            if key is not None:
                self.hardlinks[key] = node, d
        if key is not None and is_hardlink_to(st, self.cache.object_path(d)):
            node = node._replace(mode=stat.S_IFREG | LINK_FILE_MODE)   # a hard link into the cache
        return node, d

    def add_file(self, rel: bytes, node: Node, digest: str) -> None:
        self.stats["files"] += 1
        self.stats["bytes_total"] += node.size
        self.entries.append((rel, mf.FILE, node.mode & 0o7777, node.size, bytes.fromhex(digest)))
        self.files.append((rel, digest, node.size, node))

    def scan_dir(self, path: bytes, rel: bytes, name: bytes, st) -> Node:
        self.stats["dirs"] += 1
        try:
            with os.scandir(path) as it:
                listing = sorted((e.name, e) for e in it)
        except OSError as e:
            raise _source_error(e, path) from None
        children = []
        for cname, entry in listing:
            cpath = path + b"/" + cname
            crel = rel + b"/" + cname if rel else cname
            try:
                cst = entry.stat(follow_symlinks=False)
            except OSError as e:
                raise _source_error(e, cpath) from None
            mode = cst.st_mode
            if stat.S_ISDIR(mode) and (cst.st_dev, cst.st_ino) in self.left_out:
                continue        # the repository itself, or the local cache
            if stat.S_ISDIR(mode):
                children.append(self.scan_dir(cpath, crel, cname, cst))
                self.entries.append((crel, mf.DIR, mode & 0o7777, 0, b""))
            elif stat.S_ISREG(mode):
                node, d = self.file_entry(cpath, crel, cname, cst)
                children.append(node)
                self.add_file(crel, node, d)
            elif stat.S_ISLNK(mode):
                got = self.cache_link(cpath, cname, cst)
                if got is not None:
                    children.append(got[0])
                    self.add_file(crel, *got)
                else:
                    try:
                        target = os.readlink(cpath)
                    except OSError as e:
                        raise _source_error(e, cpath) from None
                    children.append(self.node(cname, cst, target=target))
                    self.entries.append((crel, mf.LINK, 0, 0, target))
                    self.stats["files"] += 1
            else:
                self.warnings.append(f"{os.fsdecode(cpath)}: not a file, directory or symlink: skipped")
                self.stats["skipped"] += 1
        tid = self.session.add_tree(Tree(children))
        return self.node(name, st, subtree=tid)

    def store_bytes(self, data: bytes) -> bytes:
        from ...codec.chunking import Chunker
        ids = []
        for c in Chunker(self.repo.config.chunker).cut_buffer(data):
            ids.append(self.session.add_chunk(c))
        return b"".join(ids)


def _ancestors_tree(snap: _Snapshotter, abspath: bytes, item: Node, extra: List[Node]) -> bytes:
    """Wrap item in its parents up to '/', with their real metadata; the root also gets extra."""
    node = item
    d = os.path.dirname(abspath)
    while d != b"/":
        st = os.lstat(d)
        tid = snap.session.add_tree(Tree([node]))
        node = snap.node(os.path.basename(d), st, subtree=tid)
        d = os.path.dirname(d)
    return snap.session.add_tree(Tree(sorted([node] + extra, key=lambda n: n.name)))


def _previous(repo, host: str, subset: str) -> Optional[BackupRecord]:
    cands = [r for r in repo.list_backups()
             if r.kind == "snapshot" and r.host == host and r.subset == subset and r.end_ns is not None]
    return cands[-1] if cands else None


def _prev_map(repo, rec: BackupRecord) -> dict:
    """rel path -> (node, digest) of the files of a previous snapshot of the same path."""
    info = rec.snapshot or {}
    item = os.fsencode(info.get("tree_path", ""))
    root = bytes.fromhex(rec.root)
    if info.get("type") == "file":
        try:
            return {b"": (find_node(repo, root, item), info["digest"])}
        except NotFound:
            return {}
    try:
        entries = mf.decode(read_manifest(repo, rec))
    except (ChunkrepoError, ValueError):
        return {}
    digests = {e.path: e.digest for e in entries if e.type == mf.FILE}
    out = {}
    n = len(item.strip(b"/").split(b"/"))
    for e in walk(repo, root, item, include_start=False):
        rel = b"/".join(e.path.split(b"/")[n:])
        if e.node.kind == REG and rel in digests:
            out[rel] = (e.node, digests[rel])
    return out


def _left_out(repo, cache: LocalCache) -> FrozenSet[Tuple[int, int]]:
    """The directories a snapshot leaves out wherever it meets them: the repository (as a
    backup does; it changes while it is written) and the local cache."""
    out = set()
    for d in ([] if repo.remote else [repo.path]) + [cache.root]:
        try:
            st = os.stat(d)
        except OSError:
            continue
        out.add((st.st_dev, st.st_ino))
    return frozenset(out)


@contextmanager
def _write_session(repo, wait: float):
    """repo's write session; while another process holds the writer lock, the lock is
    tried again every LOCK_POLL_S for up to wait seconds before RepoLocked.  (Threads of
    this process wait for each other's sessions in any case: repository.session.)"""
    deadline = time.monotonic() + wait
    with ExitStack() as stack:
        while True:
            try:
                session = stack.enter_context(repo.write_session())
                break
            except RepoLocked:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                time.sleep(min(LOCK_POLL_S, left))
        yield session


def _check_wait(wait) -> float:
    if isinstance(wait, bool) or not isinstance(wait, (int, float)):
        raise TypeError(f"wait is a number of seconds, not {wait!r}")
    if not wait >= 0:
        raise ValueError(f"wait is a number of seconds >= 0, not {wait!r}")
    return float(wait)


def take_snapshot(repo, path, workspace_dir=None, cache: Optional[LocalCache] = None,
                  host: Optional[str] = None, clock=time.time_ns, wait: float = 0) -> SnapshotResult:
    """Store the file or directory at path as a snapshot; returns its digest and record id.

    wait: seconds to keep trying while another process holds the writer lock."""
    wait = _check_wait(wait)
    cache = cache or LocalCache()
    apath = os.path.abspath(os.fspath(path))
    bpath = os.fsencode(apath)
    if apath == "/":
        raise ChunkrepoError("cannot snapshot / itself; name a directory below it")
    if not repo.remote and below(os.path.realpath(apath), os.path.realpath(repo.path)) is not None:
        raise ChunkrepoError(f"{apath} is the repository {repo.path} or lies inside it: not snapshotting it")
    lst = os.lstat(apath)                   # (str paths: an OSError names the path as text)
    name = os.path.basename(bpath)
    link_digest = cache.digest_of_link_target(bpath, os.readlink(bpath)) if stat.S_ISLNK(lst.st_mode) else None
    st = lst if link_digest else os.stat(apath)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or link_digest):
        raise ChunkrepoError(f"{apath}: not a regular file or directory")
    is_dir = stat.S_ISDIR(st.st_mode) and not link_digest
    if workspace_dir is not None:
        workspace = os.path.abspath(os.fspath(workspace_dir))
    else:
        workspace = find_workspace(apath if is_dir else os.path.dirname(apath))
    rel = relpath_in(apath, workspace)
    host = host or socket.gethostname()
    subset = SUBSET_PREFIX + apath
    start_ns = clock()
    with _write_session(repo, wait) as session:
        index_missing(repo)
        parent = _previous(repo, host, subset)
        prev, trust = None, 0
        if parent is not None and (parent.snapshot or {}).get("type") == ("dir" if is_dir else "file"):
            prev = _prev_map(repo, parent)
            trust = parent.start_ns - TRUST_GRANULARITY_NS
        snap = _Snapshotter(repo, session, cache, prev, trust, _left_out(repo, cache) if is_dir else frozenset())
        extra: List[Node] = []
        if is_dir:
            item = snap.scan_dir(bpath, b"", name, st)
            data = mf.encode(snap.entries)
            digest = mf.digest_of(data)
            mst = os.lstat(bpath)
            extra.append(snap.node(MANIFEST_NAME, mst, chunks=snap.store_bytes(data))._replace(
                mode=stat.S_IFREG | 0o444, size=len(data), nlink=1, ino=0, xattrs=None))
            length = sum(f[2] for f in snap.files)
        else:
            if link_digest:
                got = snap.cache_link(bpath, name, lst)
            else:
                got = snap.borrow(b"", name, st) or snap.read_file(bpath, name, st, follow=True)
            item, digest = got
            snap.add_file(b"", item, digest)
            length = item.size
        root = _ancestors_tree(snap, bpath, item, extra)
        session.flush()
        end_ns = clock()
        stats = dict(snap.stats, bytes_new=session.bytes_new, bytes_stored=session.bytes_stored,
                     files_changed_during_backup=0, errors=len(snap.warnings))
        info = {"type": "dir" if is_dir else "file", "digest": digest, "name": os.fsdecode(name),
                "relpath": rel, "original_path": apath, "tree_path": apath, "time_ns": start_ns,
                "content_length": length, "files": len(snap.files)}
        rec = BackupRecord("", host, subset, [apath], start_ns, end_ns, root.hex(), kind="snapshot",
                           stats=stats, snapshot=info)
        rec.id = hash_bytes(records.encode_json(rec.to_dict()))[:16].hex()
        session.commit_backup(rec)
        _index_record(repo, rec, [(bpath + (b"/" + r if r else b""), d, n) for r, d, _, n in snap.files])
    for w in snap.warnings:
        warnings.warn(w)
    return SnapshotResult(rec.id, digest, info["type"], info["name"], rel, apath, start_ns, length,
                          stats, [(os.fsdecode(r), d, s) for r, d, s, _ in snap.files], snap.warnings)


# -- the digests index ------------------------------------------------------------
def _index_record(repo, rec: BackupRecord, files) -> None:
    info = rec.snapshot or {}
    with repo.index.write() as w:
        if info.get("type") == "dir":
            w.put_digest(bytes.fromhex(info["digest"]),
                         msgpack.packb(["d", rec.id, os.fsencode(info["tree_path"])], use_bin_type=True))
        for tpath, d, node in files:
            row = ["f", rec.id, tpath] + ([node.size, node.chunks, node.sparse] if node is not None else [])
            w.put_digest(bytes.fromhex(d), msgpack.packb(row, use_bin_type=True))
        w.put_digest(_MARK + rec.id.encode(), b"")


def _record_files(repo, rec: BackupRecord):
    info = rec.snapshot or {}
    item = os.fsencode(info["tree_path"])
    if info.get("type") == "file":
        return [(item, info["digest"], None)]
    return [(item + b"/" + e.path, e.digest, None)
            for e in mf.decode(read_manifest(repo, rec)) if e.type == mf.FILE]


def index_missing(repo) -> int:
    """Index the stored snapshot records the digests db does not know yet (needs the writer lock)."""
    with repo.index.read() as v:
        todo = [r for r in repo.list_backups() if r.kind == "snapshot" and r.snapshot
                and v.digest(_MARK + r.id.encode()) is None]
    for rec in todo:
        try:
            _index_record(repo, rec, _record_files(repo, rec))
        except (ChunkrepoError, ValueError):
            continue     # a damaged record is check's business
    return len(todo)


# -- finding a digest ---------------------------------------------------------------
def read_manifest(repo, rec: BackupRecord) -> bytes:
    info = rec.snapshot or {}
    node = find_node(repo, bytes.fromhex(rec.root), b"/" + MANIFEST_NAME)
    data = ChunkFile(repo, node, MANIFEST_NAME).read()
    if mf.digest_of(data) != info.get("digest"):
        raise IntegrityError(f"snapshot {rec.id}: its manifest does not match digest {info.get('digest')}")
    return data


def _make_located(repo, type_: str, digest: str, rec: BackupRecord, path: bytes) -> Optional[Located]:
    try:
        node = find_node(repo, bytes.fromhex(rec.root), path)
    except NotFound:
        return None
    if node.kind != (REG if type_ == "file" else DIR):
        return None
    return Located(type_, digest, rec, path, node)


def _locate_indexed(repo, digest: str) -> Optional[Located]:
    with repo.index.read() as v:
        raw = v.digest(bytes.fromhex(digest))
        if raw is None:
            return None
        t, bid, path = msgpack.unpackb(raw, raw=False)[:3]
        rec_raw = v.backup(bid)
    if rec_raw is None:
        return None     # forgotten since: the scan may find another copy
    rec = BackupRecord.from_dict(records.decode_json(rec_raw))
    return _make_located(repo, "dir" if t == "d" else "file", digest, rec, path)


def locate(repo, digest: str) -> Located:
    """Where a file or directory digest (or a unique prefix of a snapshot's digest) is stored.

    Raises FileNotFoundError when the repository knows no such digest, TypeError when
    digest is not a str."""
    if not isinstance(digest, str):
        raise TypeError(f"a snapshot digest is a str of hex digits, not {type(digest).__name__} {digest!r}")
    d = digest.strip().lower()
    if not d or any(c not in "0123456789abcdef" for c in d):
        raise FileNotFoundError(2, f"not a snapshot digest: {digest!r}")
    if is_digest(d):
        loc = _locate_indexed(repo, d)
        if loc is not None:
            return loc
    snaps = [r for r in reversed(repo.list_backups()) if r.kind == "snapshot" and r.snapshot]
    matches = {}
    for r in snaps:
        sd = r.snapshot.get("digest", "")
        if sd.startswith(d) and sd not in matches:
            matches[sd] = r
    if len(matches) > 1:
        raise AmbiguousId(f"digest prefix {d!r} matches {len(matches)} snapshots; give more digits")
    if matches:
        sd, r = next(iter(matches.items()))
        loc = _make_located(repo, r.snapshot["type"], sd, r, os.fsencode(r.snapshot["tree_path"]))
        if loc is not None:
            return loc
    if is_digest(d):    # a file inside a directory snapshot the index has not caught up with
        for r in snaps:
            if r.snapshot.get("type") != "dir":
                continue
            try:
                for tpath, fd, _ in _record_files(repo, r):
                    if fd == d:
                        loc = _make_located(repo, "file", d, r, tpath)
                        if loc is not None:
                            return loc
            except (ChunkrepoError, ValueError):
                continue
    raise FileNotFoundError(2, f"no snapshot with digest {digest} in the repository {repo.path}")


def dir_listing(repo, loc: Located) -> List[Tuple[mf.MEntry, Optional[Node]]]:
    """The manifest of a directory snapshot, each file with its stored node."""
    entries = mf.decode(read_manifest(repo, loc.record))
    n = len(loc.path.strip(b"/").split(b"/"))
    nodes: Dict[bytes, Node] = {}
    for e in walk(repo, bytes.fromhex(loc.record.root), loc.path, include_start=False):
        if e.node.kind == REG:
            nodes[b"/".join(e.path.split(b"/")[n:])] = e.node
    out = []
    for e in entries:
        node = nodes.get(e.path) if e.type == mf.FILE else None
        if e.type == mf.FILE and (node is None or node.size != e.size):
            raise IntegrityError(f"snapshot {loc.record.id}: {os.fsdecode(e.path)} is in the manifest "
                                 f"but not stored as listed")
        out.append((e, node))
    return out


def snapshot_time(rec: BackupRecord) -> datetime.datetime:
    ns = (rec.snapshot or {}).get("time_ns", rec.start_ns)
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.timezone.utc)
