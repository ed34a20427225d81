"""Reads one regular file safely and stores its chunks.

Race detection (backshift's no_games, with the ctime/inode checks of borg and
restic): the file is opened with O_NOFOLLOW|O_NONBLOCK and, once read, the
handle's fstat must describe the object the walk lstat'ed (same device, inode,
type, mode and owner) with the same size, mtime and ctime.  Whatever changed
the file between the lstat and the end of the read changed its ctime, so one
fstat after the read covers both the swap of the object and a write during the
read (one system call per file fewer than an fstat before and after).  A file
that fails is retried once by the caller with a fresh lstat and then reported
as changed during the backup, never stored torn.
"""

import errno
import itertools
import os
import stat
import threading
from typing import Callable, Optional

from ...codec.chunking import Chunker
from ...codec.hashing import hash_bytes
from ...memcopy import Target
from ..extents import data_extents

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
_O_NOATIME = getattr(os, "O_NOATIME", 0)


class FileChanged(Exception):
    """The file is not the one we lstat'ed, or changed while we read it.
    nread: the bytes read before that was seen (they count as read)."""

    def __init__(self, nread: int = 0):
        super().__init__()
        self.nread = nread


def same_object(a, b) -> bool:
    return (stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode) and a.st_dev == b.st_dev
            and a.st_ino == b.st_ino and a.st_uid == b.st_uid and a.st_gid == b.st_gid
            and a.st_mode == b.st_mode)


def unchanged(lst, fst) -> bool:
    """fst (an fstat after reading) describes the object lst (the walk's lstat) did, unchanged."""
    return (lst.st_ino == fst.st_ino and lst.st_dev == fst.st_dev and lst.st_mode == fst.st_mode
            and lst.st_size == fst.st_size and lst.st_mtime_ns == fst.st_mtime_ns
            and lst.st_ctime_ns == fst.st_ctime_ns and lst.st_uid == fst.st_uid and lst.st_gid == fst.st_gid)


def read_xattrs(target, all_namespaces: bool):
    """[[name, value], ...] (sorted) or None; target: a path (a symlink is not followed)
    or an open descriptor (of a file being read: no second path lookup)."""
    follow = isinstance(target, int)     # a descriptor is the object itself
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError:
        return None
    out = []
    for name in sorted(names):
        if not all_namespaces and not name.startswith("user."):
            continue
        try:
            out.append([name.encode(), os.getxattr(target, name, follow_symlinks=follow)])
        except OSError:
            continue
    return out or None


def _xattrs(fd: int, all_xattrs: Optional[bool]):
    return None if all_xattrs is None else read_xattrs(fd, all_xattrs)


def _open(path: bytes) -> int:
    if _O_NOATIME:
        try:
            return os.open(path, _OPEN_FLAGS | _O_NOATIME)
        except PermissionError:
            pass   # O_NOATIME needs ownership; plain open may still work
    return os.open(path, _OPEN_FLAGS)


def read_with_retry(saver: "FileSaver", path: bytes, st, all_xattrs: Optional[bool]) -> tuple:
    """Read and store a file the walk queued, once more with a fresh lstat when it changed
    meanwhile.  (kind, bytes read and discarded, what): ("ok", n, read_file's result),
    ("changed", n, None) (it never held still, or is no longer a regular file),
    ("vanished", n, None) or ("error", n, the reason)."""
    discarded = 0
    for _ in (1, 2):
        try:
            return "ok", discarded, saver.read_file(path, st, all_xattrs)
        except FileChanged as e:
            discarded += e.nread
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                break
            if not stat.S_ISREG(st.st_mode):
                break
        except FileNotFoundError:
            return "vanished", discarded, None
        except OSError as e:
            if e.errno == errno.ELOOP:   # O_NOFOLLOW met a symlink: replaced since the walk
                break
            return "error", discarded, e.strerror or str(e)
    return "changed", discarded, None


class _Reader:
    """readinto over the whole file, or over its data extents only."""

    def __init__(self, fd: int, extents):
        self.fd = fd
        self.extents = extents
        self.i = 0
        self.pos = extents[0][0] if extents else 0
        self.total = 0

    def readinto(self, mv) -> int:
        if self.extents is None:
            n = os.readv(self.fd, [mv])
        else:
            while self.i < len(self.extents):
                off, length = self.extents[self.i]
                left = off + length - self.pos
                if left > 0:
                    n = os.preadv(self.fd, [mv[:left]], self.pos)
                    if n == 0:
                        raise FileChanged(self.total)
                    self.pos += n
                    break
                self.i += 1
                if self.i < len(self.extents):
                    self.pos = self.extents[self.i][0]
            else:
                n = 0
        self.total += n
        return n


class _StreamReader:
    """readinto over any binary file object (an fsspec file), counting the bytes."""

    def __init__(self, raw):
        self.raw = raw
        self.total = 0

    def readinto(self, mv) -> int:
        n = self.raw.readinto(mv) or 0
        self.total += n
        return n


class FileSaver:
    """Per-thread state: a chunker and a reusable read buffer (fresh memory is costly).

    help(fn, *args): a Future of fn(*args) run by an idle thread, or None when no
    thread is idle.  A large file is read by one thread; with help, a pool thread
    that has nothing else to do compresses its chunks alongside the reader
    (the last large file of a backup is not compressed on one core alone)."""

    def __init__(self, session, chunker_params, help: Optional[Callable] = None):
        self.session = session
        self.params = chunker_params
        self._local = threading.local()
        self._help = help
        # a list: small files' (id, content) are appended here for the caller to claim
        # and store together (one claim for a batch of them: reader_procs)
        self.deferred: Optional[list] = None

    def _state(self):
        st = getattr(self._local, "state", None)
        if st is None:
            cap = 2 * self.params.max_size   # the least that keeps a moved tail clear of its source
            st = self._local.state = (Chunker(self.params), Target(bytearray(cap)))
        return st

    def read_file(self, path: bytes, lst, all_xattrs: Optional[bool] = None):
        """Store a file's content.  Returns (fstat, chunk ids, sparse extents, bytes read,
        xattrs): the xattrs as read_xattrs(all_xattrs) gives them, None if all_xattrs is None."""
        fd = _open(path)
        try:
            size = lst.st_size
            if size <= self.params.min_size and lst.st_blocks * 512 >= size:
                return self._read_small(fd, lst) + (_xattrs(fd, all_xattrs),)
            extents = None
            if size > 0 and lst.st_blocks * 512 < size:
                extents = data_extents(fd, size)
                expected = sum(e[1] for e in extents)
            else:
                expected = size
            reader = _Reader(fd, extents)
            chunks = self._store_stream(reader, expected)
            fst = os.fstat(fd)
            if reader.total != expected or not unchanged(lst, fst):
                raise FileChanged(reader.total)
            return fst, chunks, extents, reader.total, _xattrs(fd, all_xattrs)
        finally:
            os.close(fd)

    def read_stream(self, raw, expected: int):
        """Store the content of a binary file object expected to hold `expected` bytes
        (a URL backup's object).  Returns (chunk ids, bytes read): the caller compares
        the count and the object's version token before trusting the result."""
        reader = _StreamReader(raw)
        return self._store_stream(reader, expected), reader.total

    def _read_small(self, fd: int, lst):
        """One chunk, one read: the common case of a host's many small files."""
        size = lst.st_size
        data = os.read(fd, size + 1) if size else b""
        if len(data) < size:      # a short read from a local file: read on until EOF
            rest = [data]
            while True:
                more = os.read(fd, size + 1 - sum(map(len, rest)))
                if not more:
                    break
                rest.append(more)
            data = b"".join(rest)
        fst = os.fstat(fd)
        if len(data) != size or not unchanged(lst, fst):
            raise FileChanged(len(data))
        if not size:
            return fst, b"", None, 0
        cid = hash_bytes(data)
        if self.deferred is not None:
            self.deferred.append((cid, data))   # claimed and stored with the rest of its batch
        elif self.session.claim_chunk(cid):
            self.session.store_chunk(cid, data)
        return fst, cid, None, size

    def _store_stream(self, reader, expected: int) -> bytes:
        session = self.session
        ids = []
        for chunks in self._cut(reader, expected):
            cids = [hash_bytes(chunk) for chunk in chunks]
            self._store([(cid, chunk) for cid, chunk, new in zip(cids, chunks, session.claim_chunks(cids))
                         if new])
            ids += cids
        return b"".join(ids)

    def _store(self, claimed: list) -> None:
        """Store the claimed (id, chunk)s in order.  When a thread is idle it compresses
        them too: both take the next chunk not taken until none is left (chunks differ in
        size, so pairs left one of them waiting), then they are appended in order (what
        waits is at most one buffer's chunks, compressed)."""
        session = self.session
        n = len(claimed)
        out: list = [None] * n
        take = itertools.count()      # next() on it is atomic: each index is taken once

        def work():
            for i in take:
                if i >= n:
                    return
                out[i] = session.compress_chunk(claimed[i][1])

        fut = self._help(work) if self._help is not None and n > 1 else None
        if fut is None:     # alone: each chunk appended once compressed (one waits at a time)
            for cid, chunk in claimed:
                session.append_chunk(cid, session.compress_chunk(chunk), len(chunk))
            return
        try:
            work()
        finally:
            if fut is not None and not fut.cancel():
                fut.result()      # it took a chunk or more: wait for them
        for (cid, chunk), z in zip(claimed, out):
            session.append_chunk(cid, z, len(chunk))

    def _cut(self, reader, expected: int):
        """Lists of chunks of the stream, memoryviews into the reused buffer: a list
        stays valid until the next one is asked for (up to one buffer's worth).

        A chunk starting at p is final once max_size bytes follow p in the
        buffer (or the stream ended): FastCDC never looks further than that,
        so boundaries equal those of cutting the whole file at once.
        """
        chunker, target = self._state()
        buf = target.buf
        mv = memoryview(buf)
        cap = len(buf)
        max_size = self.params.max_size
        if expected <= self.params.min_size:   # one chunk: no chunker needed
            end = 0
            while end < cap:
                n = reader.readinto(mv[end:])
                if n == 0:
                    break
                end += n
            if end:
                yield [mv[:end]]
            return
        end, eof = 0, False
        while True:
            while not eof and end < cap:
                n = reader.readinto(mv[end:])
                if n == 0:
                    eof = True
                else:
                    end += n
            if end == 0:
                return
            pos = 0
            ready = []
            for chunk in chunker.cut_buffer(mv[:end]):
                if not eof and end - pos < max_size:
                    break
                ready.append(chunk)
                pos += len(chunk)
            if ready:
                yield ready
            if eof and pos >= end:
                return
            rest = end - pos
            target.move(0, pos, rest)
            end = rest
