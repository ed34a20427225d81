"""Reader processes: the reads, chunking, hashing and compression of a backup in
processes of their own, each with its own interpreter lock.

The backup's process keeps the walk, the directory records and the index; each
reader process takes batches of files, reads and stores them into packs of its
own, and sends back per file what the walk needs (a status, see read_with_retry)
and per sealed pack its entries, which the backup commits at its next checkpoint
like a pack of its own.  Two processes never both store a chunk: a chunk is
claimed in a small LMDB environment of the session's claims that every reader
opens (one short write transaction per claim), and, when the repository held
chunks before the session, looked up in the index (each reader opens it read-only).
"""

import concurrent.futures
import ctypes
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time, sys, collections
STATS = collections.Counter()
T0 = time.perf_counter()
from typing import List, NamedTuple, Optional

import lmdb

from ...index import Index
from ...repository.packs import KIND_DATA, PackWriter
from ...storage import LocalStorage
from ...codec import compression
from .file_saver import FileSaver, read_with_retry

_MAX_PACK_BLOBS = 2048


class _Claims:
    """The chunk ids claimed by this session, shared by the reader processes."""

    def __init__(self, path: str):
        self.env = lmdb.open(path, map_size=1 << 36, sync=False, metasync=False, readahead=False,
                             subdir=True)

    def claim(self, cids: list) -> list:
        """Whether each id was claimed here (an id twice in cids: the first)."""
        t = time.perf_counter()
        with self.env.begin(write=True) as txn:
            put = txn.put
            r = [put(cid, b"", overwrite=False) for cid in cids]
        STATS["claim"] += time.perf_counter() - t
        STATS["claims"] += 1
        return r


class _ReaderSession:
    """What FileSaver asks of a session, inside a reader process: claims,
    compression, and packs of its own (sealed ones are sent to the backup)."""

    def __init__(self, storage, claims: _Claims, index_path: Optional[str], send, level: int,
                 small_level: int, small_blob: int, pack_size: int):
        self.storage = storage
        self.claims = claims
        # the repository's index, when it held blobs before the session (else a claim is enough)
        self.index = Index(index_path) if index_path is not None else None
        self.send = send
        self.level, self.small_level, self.small_blob = level, small_level, small_blob
        self.pack_size = pack_size
        self.writer: Optional[PackWriter] = None
        self.bytes_new = self.bytes_stored = 0

    def claim_chunks(self, cids: list) -> list:
        """Claimed first, then looked up in a snapshot taken after the claim: the
        backup removes nothing from the claims, so a chunk it committed meanwhile
        is either claimed already or in that snapshot."""
        new = self.claims.claim(cids)
        if self.index is None or not any(new):
            return new
        with self.index.read() as v:
            return [n and not v.has_chunk(cid) for cid, n in zip(cids, new)]

    def claim_chunk(self, cid: bytes) -> bool:
        return self.claim_chunks([cid])[0]

    def store_deferred(self, pairs: list) -> None:
        """Claim and store a batch's small files' (id, content), with one claim."""
        for (cid, data), new in zip(pairs, self.claim_chunks([cid for cid, _ in pairs])):
            if new:
                self.store_chunk(cid, data)

    def compress_chunk(self, data) -> tuple:
        return compression.compress_parts(data, self.small_level if len(data) <= self.small_blob else self.level)

    def store_chunk(self, cid: bytes, data) -> None:
        self.append_chunk(cid, self.compress_chunk(data), len(data))

    def append_chunk(self, cid: bytes, parts: tuple, raw_length: int) -> None:
        w = self.writer
        if w is None:
            w = self.writer = PackWriter(self.storage)
        stored = w.add_parts(KIND_DATA, cid, parts, raw_length)
        self.bytes_stored += stored
        self.bytes_new += raw_length
        if w.size >= self.pack_size or len(w.entries) >= _MAX_PACK_BLOBS:
            self.seal()

    def seal(self) -> None:
        w, self.writer = self.writer, None
        if w is None:
            return
        try:
            entries = w.seal()
        except BaseException:
            w.abort()
            raise
        self.send(("sealed", w.pack_id, entries, w.size, self.bytes_new, self.bytes_stored))
        self.bytes_new = self.bytes_stored = 0

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


class Stat(NamedTuple):
    """What the backup knows of a file's lstat or fstat, as it travels between processes."""
    st_mode: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_blocks: int
    st_rdev: int = 0


def stat_fields(st) -> tuple:
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
            st.st_dev, st.st_nlink, st.st_blocks)


def _sendable(status: tuple) -> tuple:
    if status[0] != "ok":
        return status
    fst, chunks, sparse, nread, xattrs = status[2]
    return "ok", status[1], (stat_fields(fst), chunks, sparse, nread, xattrs)


def received(status: tuple) -> tuple:
    """A status as read_with_retry gave it in the reader process."""
    if status[0] != "ok":
        return status
    fst, chunks, sparse, nread, xattrs = status[2]
    return "ok", status[1], (Stat(*fst), chunks, sparse, nread, xattrs)


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _reader_main(conn, repo_path, claims_path, index_path, chunker, all_xattrs, levels, pack_size,
                 busy, me) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the backup's process decides what stops
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    try:
        session = _ReaderSession(LocalStorage(repo_path), _Claims(claims_path), index_path, conn.send,
                                 *levels, pack_size)
    except BaseException as e:
        conn.send(("failed", e))
        return
    helper: list = []

    def help(fn, *args):
        """A large file's every second chunk compressed by a second thread while another
        reader has no batch (the last large files of a backup are not compressed on one core)."""
        if all(n for i, n in enumerate(busy) if i != me):
            return None      # every other reader has a batch
        if not helper:
            helper.append(concurrent.futures.ThreadPoolExecutor(1, "chunkrepo-help"))
        return helper[0].submit(fn, *args)

    saver = FileSaver(session, chunker, help=help)
    try:
        while True:
            t = time.perf_counter()
            msg = conn.recv()
            STATS["idle"] += time.perf_counter() - t
            if msg is None:
                break
            no, items = msg
            saver.deferred = deferred = []
            out = [_sendable(read_with_retry(saver, path, Stat(*st), all_xattrs)) for path, st in items]
            session.store_deferred(deferred)
            conn.send(("done", no, out))
        session.seal()
        STATS["cpu"] = time.process_time()
        STATS["life"] = time.perf_counter() - T0
        if os.environ.get("CR_DEBUG"):
            print({k: round(v, 3) for k, v in STATS.items()}, file=sys.stderr)
        conn.send(("bye",))
    except BaseException as e:
        session.abort()
        try:
            conn.send(("failed", e))
        except Exception:
            pass
        raise


class ReaderProcs:
    """N reader processes fed batches; submit() returns a Future of the statuses."""

    def __init__(self, session, repo_path: str, index_path: Optional[str], chunker, all_xattrs: bool,
                 n: int = 2):
        self.session = session
        self.tmp = tempfile.mkdtemp(prefix="chunkrepo-claims-")
        ctx = multiprocessing.get_context("spawn")
        levels = (session.level, session._small_level, session._small_blob)
        self.conns = []
        self.procs = []
        self.load: List[int] = []
        self.pending: dict = {}
        self.lock = threading.Lock()
        self.failure: Optional[BaseException] = None
        self._no = 0
        self.busy = ctx.RawArray("i", n)     # per reader: batches handed out and not done (they look)
        _Claims(self.tmp).env.close()
        for _ in range(n):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_reader_main, args=(b, repo_path, self.tmp, index_path, chunker, all_xattrs,
                                                      levels, session.pack_size, self.busy, len(self.procs)), daemon=True)
            p.start()
            b.close()
            self.conns.append(a)
            self.procs.append(p)
            self.load.append(0)
        self.receivers = [threading.Thread(target=self._receive, args=(i,), daemon=True,
                                           name=f"chunkrepo-reader-{i}") for i in range(n)]
        for t in self.receivers:
            t.start()

    def submit(self, items, finish, nbytes: int) -> concurrent.futures.Future:
        """A Future of finish(the statuses of items' files), finish run by a receiving thread."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        cost = nbytes + (1 << 20)     # what is left to read (a batch costs its opens too)
        with self.lock:
            if self.failure is not None:
                raise self.failure
            i = min(range(len(self.load)), key=self.load.__getitem__)
            self.load[i] += cost
            self.busy[i] += 1
            no = self._no = self._no + 1
            self.pending[no] = (fut, finish, cost)
        self.conns[i].send((no, items))
        return fut

    def _receive(self, i: int) -> None:
        conn = self.conns[i]
        session = self.session
        try:
            while True:
                msg = conn.recv()
                kind = msg[0]
                if kind == "done":
                    with self.lock:
                        fut, finish, cost = self.pending.pop(msg[1])
                        self.load[i] -= cost
                        self.busy[i] -= 1
                    try:
                        fut.set_result(finish(msg[2]))
                    except BaseException as e:
                        fut.set_exception(e)
                elif kind == "sealed":
                    session.adopt_sealed(*msg[1:])
                elif kind == "bye":
                    return
                else:
                    raise msg[1]
        except BaseException as e:    # EOFError: the process died
            self._fail(e if not isinstance(e, EOFError) else RuntimeError("a reader process died"))

    def _fail(self, e: BaseException) -> None:
        with self.lock:
            self.failure = self.failure or e
            futs = [f for f, _, _ in self.pending.values()]
            self.pending.clear()
        for f in futs:
            if not f.done():
                f.set_exception(e)

    def close(self) -> None:
        """Seal the readers' open packs (their entries reach the session) and end them."""
        try:
            for c in self.conns:
                try:
                    c.send(None)
                except OSError:
                    pass
            for t in self.receivers:
                t.join()
            for p in self.procs:
                p.join()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self.failure is not None:
            raise self.failure

    def kill(self) -> None:
        """End the processes whatever they are doing (the backup failed)."""
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join()
        shutil.rmtree(self.tmp, ignore_errors=True)
