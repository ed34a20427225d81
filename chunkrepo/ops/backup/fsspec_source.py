"""Backing up an fsspec URL (s3://bucket/data, memory://..., file:///..., sftp://...).

The walk is the local backup's (run.Backup) with the filesystem's listing
instead of scandir/lstat: one ``ls(detail=True)`` per directory, sorted by
name, in lockstep with the previous backup of the same host+subset; objects
to read go to the same batches, pool, file saver (chunker, hashing,
compression) and tree saver.  Reading streams through ``fs.open`` in blocks
no larger than the file saver's buffer, so memory is bounded whatever the
object sizes.

What is recorded
    The backup's tree is the URL's directory: ``s3://b/data/x/y`` is ``/x/y``.
    Directories come from the listing (key prefixes on object stores).
    Objects get their size, their modification time from the listing
    (``LastModified``, ``mtime``, ``created``; 0 when there is none; the
    ctime is set equal to it) and, when the listing has one, their ETag in
    Node.etag.  There are no owners or modes: files are 0644 and directories
    0755, owned by uid/gid 0 with no names, so the records do not depend on
    who runs the backup.  Anything else the listing shows (a local symlink,
    a device) is skipped and reported.

Unchanged objects
    An object is unchanged when its size equals the previous backup's and,
    if either listing has an ETag, the ETags are equal (an opaque token:
    multipart ETags are not MD5s), else when its mtime is equal and older than
    the previous backup's start minus 1 s (the local backup's racy-timestamp
    rule).  Its chunk list is reused; nothing is read.

Objects changing while read
    After reading, the object's info is fetched again (not from the listing
    cache): the byte count must equal the listed size and the size, the ETag
    (or, without one, the mtime) must be unchanged.  A read that fails that
    check or raises is retried once with fresh info; then the object is
    reported and keeps the previous backup's version if there is one, else it
    is left out (as a local file changing during a backup is).  Nothing read
    from two versions of an object is ever stored.
"""

import datetime
import socket
import stat
import time
from typing import NamedTuple, Optional

from ...errors import ChunkrepoError, NotFound
from ...model import BackupRecord, Node
from ...model.nodes import DIR, REG
from ..fsspec_url import fs_errors, one_line, open_url
from ..url_place import below, place, repo_place, same_store
from .run import Backup, BackupOptions, BackupResult, commit_record, find_parent
from .tree_saver import PendingDir

FILE_MODE = stat.S_IFREG | 0o644
DIR_MODE = stat.S_IFDIR | 0o755
_READ_BLOCK = 4 << 20      # fsspec block size: what one ranged GET asks for at most
_MTIME_KEYS = ("LastModified", "mtime", "last_modified", "updated", "created")
_ETAG_KEYS = ("ETag", "etag")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


class ObjectInfo(NamedTuple):
    """What the listing says about an object (field names as run.Backup expects of a stat)."""

    st_size: int
    st_mtime_ns: int
    etag: Optional[str]


class _Changed(Exception):
    """The object is not the one listed any more (or no longer readable as listed).
    nread: the bytes read before that was seen (they count as read)."""

    def __init__(self, nread: int):
        super().__init__()
        self.nread = nread


def mtime_ns(info: dict) -> int:
    """Nanoseconds since the epoch from a listing entry (datetime, float seconds or ISO text),
    to the microsecond: a listing's float and an info's datetime of one object must agree."""
    for key in _MTIME_KEYS:
        v = info.get(key)
        if v is None:
            continue
        if isinstance(v, str):
            try:
                v = datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(v, datetime.datetime):
            if v.tzinfo is None:
                v = v.replace(tzinfo=datetime.timezone.utc)
            return (v - _EPOCH) // datetime.timedelta(microseconds=1) * 1000
        if isinstance(v, (int, float)):     # float seconds: exact to the microsecond only
            return round(v * 1_000_000) * 1000
    return 0


def object_info(info: dict) -> ObjectInfo:
    etag = next((str(info[k]) for k in _ETAG_KEYS if info.get(k)), None)
    return ObjectInfo(int(info.get("size") or 0), mtime_ns(info), etag)


def unchanged(prev: Optional[Node], obj: ObjectInfo, trust_before: int) -> bool:
    """May prev's chunk list stand for the object the listing describes?"""
    if prev is None or prev.kind != REG or prev.size != obj.st_size:
        return False
    if obj.etag is not None or prev.etag is not None:
        return prev.etag == obj.etag
    return prev.mtime_ns == obj.st_mtime_ns and prev.mtime_ns < trust_before


def same_version(after: ObjectInfo, obj: ObjectInfo) -> bool:
    """The same size and ETag (or, without one, mtime) as listed.  (Mtimes are compared only
    without an ETag: an S3 listing gives milliseconds where a HEAD gives seconds, on Ceph.)"""
    if after.st_size != obj.st_size:
        return False
    return after.etag == obj.etag if obj.etag is not None else after.st_mtime_ns == obj.st_mtime_ns


def file_node(name: bytes, obj: ObjectInfo, chunks: bytes) -> Node:
    return Node(name, FILE_MODE, 0, 0, "", "", obj.st_size, obj.st_mtime_ns, obj.st_mtime_ns,
                0, 0, 1, 0, b"", None, chunks, None, None, obj.etag)


def dir_node(name: bytes, info: dict) -> Node:
    t = mtime_ns(info)
    return Node(name, DIR_MODE, 0, 0, "", "", 0, t, t, 0, 0, 1, 0, b"", None, b"", None, None)


def _name(key: str) -> bytes:
    return key.rstrip("/").rpartition("/")[2].encode("utf-8", "surrogateescape")


# what a backup (and a diff) leaves out of a listing, by info["left_out"]
LEFT_OUT = {
    "shadowed": "an object and a prefix share this name",
    "marker": "a directory marker object holding data",
    "empty_segment": "a name with an empty path segment ('//')",
}


def _entries(listing, key: str):
    """(name, info) of a directory listing sorted by name, without the directory's own
    empty marker object ('data/').  What a backup cannot hold comes marked with
    info["left_out"] (a LEFT_OUT key): an object listed with a prefix of the same name
    ('a' and 'a/b': the prefix is kept), a marker object 'data/' holding data, and the
    prefix 'data//' of names with an empty segment (the tree has no empty names)."""
    by_name: dict = {}
    for info in listing:
        name = _name(info["name"])
        if info["name"].rstrip("/") == key:       # the directory's own name and a '/'
            if info.get("type") == "directory":
                by_name[b""] = dict(info, left_out="empty_segment")
            elif info.get("size"):
                by_name[b"\0"] = dict(info, left_out="marker")
            continue
        if not name:
            continue
        other = by_name.get(name)
        if other is not None:
            obj, prefix = (other, info) if info.get("type") == "directory" else (info, other)
            by_name[name] = prefix
            by_name[name + b"\0"] = dict(obj, left_out="shadowed")   # reported just after it
            continue
        by_name[name] = info
    return sorted(by_name.items())


def list_dir(fs, key: str) -> list:
    """The directory at key as (name, key, info) sorted by name, from one fresh
    ``ls(detail=True)`` (never fsspec's listing cache: filesystem instances, and their
    cached listings, live as long as the process).  Entries a backup leaves out carry
    info["left_out"] (see _entries); a shadowed object comes just after its prefix."""
    fs.invalidate_cache(key)
    return [(name, info["name"].rstrip("/"), info) for name, info in _entries(fs.ls(key, detail=True), key)]


def empty_segment_keys(fs, key: str) -> list:
    """The objects whose names continue key with '//', sorted."""
    fs.invalidate_cache(key)
    try:
        found = fs.find(key, prefix="/")      # s3fs: only the names that start with key//
    except TypeError:                         # a filesystem whose find has no prefix
        found = fs.find(key)
    return sorted(k for k in found if k.startswith(key + "//"))


def listed_node(name: bytes, info: dict) -> Optional[Node]:
    """A listing entry as a backup records it, without its chunk list (b""); None for
    what a backup leaves out (neither an object nor a directory)."""
    kind = info.get("type")
    if kind == "directory":
        return dir_node(name, info)
    if kind == "file":
        return file_node(name, object_info(info), b"")
    return None


def open_object(fs, key: str):
    """The object at key to stream: ranged reads of _READ_BLOCK, no read cache."""
    return fs.open(key, "rb", block_size=_READ_BLOCK, cache_type="none")


def _position(f) -> int:
    try:
        return int(f.tell())
    except Exception:          # a file object that cannot say: nothing counted
        return 0


def read_chunks(fs, key: str, saver, size: int):
    """(chunk ids, bytes read) of the object at key, streamed through saver (a FileSaver)."""
    with open_object(fs, key) as f:
        return saver.read_stream(f, size)


def repo_below(repo, url: str, options: Optional[dict]) -> bytes:
    """The repository's path in a backup of url when url holds it (it is never backed up
    into itself: a local directory, a file:// tree, an S3 prefix of the same endpoint),
    else a path no entry has."""
    mine = repo_place(repo)
    there = place(url, options)
    rel = below(mine.path, there.path) if same_store(mine, there) else None
    return ("/" + rel).encode("utf-8", "surrogateescape") if rel else b"\0"


class UrlBackup(Backup):
    """run.Backup walking a filesystem's listing; `shown` prefixes paths in messages."""

    def __init__(self, repo, session, opts: BackupOptions, fs, root: str, shown: str, own_repo: bytes):
        super().__init__(repo, session, opts)
        self.fs = fs
        self.root = root
        self.cut = len(root.rstrip("/"))      # key[cut:] is '/' + the path in the backup
        self.shown = shown
        self.cache_links.enabled = False      # no symlinks into the local cache here
        self.own_repo = own_repo              # left out: never backed up into itself
        self.procs_after = None               # objects are read through fs: the threads read them

    def error(self, key: str, msg: str) -> None:
        """key: the object's path in the filesystem; messages name its URL."""
        with self._lock:
            self.res.errors.append(f"{self.shown}{key[self.cut:]}: {msg}")

    def _rel(self, key: str) -> bytes:
        return key[self.cut:].encode("utf-8", "surrogateescape") or b"/"

    def leave_out(self, key: str, why: str) -> None:
        """Report (and count as skipped) what the listing shows and the backup cannot hold."""
        if why == "shadowed":
            self.error(key, f"{LEFT_OUT[why]}: the object is not stored")
            self.res.skipped += 1
        elif why == "marker":
            self.error(key + "/", f"{LEFT_OUT[why]}: not stored")
            self.res.skipped += 1
        else:
            try:
                keys = empty_segment_keys(self.fs, key)
            except Exception as e:     # the library's own exceptions included
                self.error(key + "//", f"{LEFT_OUT[why]}: cannot list them: {one_line(e)}")
                self.res.skipped += 1
                return
            for k in keys:       # none: gone since the listing (or a store listing a directory in itself)
                self.error(k, f"{LEFT_OUT[why]}: not stored")
            self.res.skipped += len(keys)

    def scan_url_dir(self, key: str, name: bytes, info: dict, prev: Optional[Node]) -> PendingDir:
        prev_entries, prev_children = self.prev_listing(prev)
        self.res.dirs += 1
        try:
            listing = list_dir(self.fs, key)
        except Exception as e:       # the library's own exceptions included
            if key == self.root:     # nothing to back up: not a backup with an error
                raise ChunkrepoError(f"{self.shown}: cannot list: {one_line(e)}") from None
            self.error(key, f"cannot list directory: {one_line(e)}")
            self.res.skipped += 1
            listing = []
        self._borrowed.append([])
        children: list = []
        for cname, ckey, cinfo in listing:
            if cinfo.get("left_out"):
                self.leave_out(ckey, cinfo["left_out"])
                continue
            if self.excluded(self._rel(ckey), cname):
                continue
            child = self.scan_url_entry(ckey, cname, cinfo, prev_children.get(cname))
            if child is not None:
                children.append(child)
        self._verify_borrowed(children, self._borrowed.pop())
        pd = PendingDir(dir_node(name, info), children, prev, prev_entries)
        self.trees.add(pd)
        self._progress()
        return pd

    def scan_url_entry(self, key: str, name: bytes, info: dict, prev: Optional[Node]):
        kind = info.get("type")
        if kind == "directory":
            return self.scan_url_dir(key, name, info, prev if prev is not None and prev.kind == DIR else None)
        if kind != "file":
            self.error(key, f"is not a regular file or directory ({kind}): skipped")
            self.res.skipped += 1
            return None
        obj = object_info(info)
        self.res.files += 1
        self.res.bytes_total += obj.st_size
        if not unchanged(prev, obj, self.trust_before):
            return self.queue_read(key, name, obj, prev)
        node = prev
        if prev.mtime_ns != obj.st_mtime_ns:      # same content (ETag), touched
            node = prev._replace(mtime_ns=obj.st_mtime_ns, ctime_ns=obj.st_mtime_ns)
        self.res.files_borrowed += 1
        self.res.bytes_done += obj.st_size
        self._borrowed[-1].append((node, key, obj, prev))   # chunks checked per directory
        return node

    # -- worker side ----------------------------------------------------------
    def _fresh_info(self, key: str) -> ObjectInfo:
        self.fs.invalidate_cache(key)             # the listing cache would answer the old info
        info = self.fs.info(key)
        if info.get("type") != "file":
            raise FileNotFoundError(key)
        return object_info(info)

    def _read_object(self, key: str, obj: ObjectInfo):
        with open_object(self.fs, key) as f:
            try:
                chunks, nread = self.saver.read_stream(f, obj.st_size)
            except Exception:          # what was read before the failure counts as read
                with self._lock:
                    self.res.bytes_read += _position(f)
                raise
        if nread != obj.st_size or not same_version(self._fresh_info(key), obj):
            raise _Changed(nread)
        return chunks, nread

    def _moved_on(self, key: str, obj: ObjectInfo) -> bool:
        """After a failed read: is the object not the one listed any more?"""
        try:
            return not same_version(self._fresh_info(key), obj)
        except Exception:
            return False

    def _read_one(self, key, name, obj, prev) -> Optional[Node]:
        counted = obj.st_size          # what the walk added to bytes_total (run.Backup's rule)
        problem = ""
        for attempt in (1, 2):
            try:
                if attempt == 2:
                    obj = self._fresh_info(key)
                chunks, nread = self._read_object(key, obj)
            except FileNotFoundError:
                self.error(key, "vanished before it could be read")
                self._not_stored(counted, skipped=True)
                return None
            except _Changed as e:
                with self._lock:
                    self.res.bytes_read += e.nread
                problem = "changed during the backup"
                continue
            except Exception as e:     # the library's own exceptions included: s3fs raises
                # FileExpired when the ETag changes under its ranged GETs on moto and AWS,
                # and other errors where the engine answers 412 differently (Ceph)
                problem = ("changed during the backup" if self._moved_on(key, obj)
                           else f"could not be read ({type(e).__name__}: {one_line(e)})")
                continue
            self._stored(nread, obj.st_size, counted)
            return file_node(name, obj, chunks)
        return self._gave_up(key, problem, prev, counted)

    def run_url(self, parent: Optional[BackupRecord], root_info: dict) -> Node:
        prev_root = self.start(parent)
        try:
            pd = self.scan_url_dir(self.root, b"", root_info, prev_root)
            self.trees.finish_all()
        finally:
            self.pool.shutdown(wait=True)
        self.apply_corrections()
        return pd.result


def run_url_backup(repo, url: str, opts: BackupOptions, options: Optional[dict] = None,
                   fs=None) -> BackupResult:
    """Back up the fsspec URL into repo.  options: the filesystem's options; fs, if given,
    is used instead of opening one from the URL (its root path is still the URL's)."""
    t0 = time.monotonic()
    opened, root, shown = open_url(url, options or {})
    fs = fs or opened
    with fs_errors(shown):
        info = fs.info(root)
    if info.get("type") != "directory":
        raise NotFound(f"{shown}: not a directory (back up the directory holding it)")
    host = opts.host or socket.gethostname()
    subset = opts.subset if opts.subset is not None else shown
    start_ns = opts.clock()
    with repo.write_session() as session:
        parent = find_parent(repo, host, subset)
        job = UrlBackup(repo, session, opts, fs, root, shown, repo_below(repo, url, options))
        root_node = job.run_url(parent, info)
        commit_record(session, job.res, parent, BackupRecord(
            "", host, subset, [shown], start_ns, opts.clock(), root_node.subtree.hex()))
    job.res.elapsed = time.monotonic() - t0
    job._progress(force=True)
    return job.res
