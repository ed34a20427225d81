"""Reader processes: a backup's reads, chunking, hashing and compression in processes
of their own, each with its own interpreter lock (docs/design.md, "Reader processes").

The backup's process keeps the walk, the directory records and the index.  Once a
backup has queued enough to read (BackupOptions.processes_after), it starts one reader
process per worker and hands them its batches from then on.  A reader reads each file
of a batch (FileSaver, with the same race checks and retry as a reader thread), claims
and stores its chunks through a ReaderSession (shared claims, packs of its own) and
answers with one status per file (file_saver.read_with_retry); each pack it seals goes
to the backup's session, which indexes it at its next checkpoint.

The readers are started with `python -c` (not multiprocessing, which would import the
caller's __main__ again: a library must not do that to a pipeline's script), in a
session of their own (a Ctrl-C on the terminal reaches the backup only) and with
PR_SET_PDEATHSIG, so that they die with the backup, whatever kills it.
"""

import concurrent.futures
import mmap
import os
import socket
from multiprocessing.connection import Connection
from typing import List, NamedTuple

from ...errors import StorageError
from ...process import ChildProcs, run_child, start_child
from ...repository.reader_session import ReaderSession
from ...repository.shared_claims import SharedClaims
from ...storage import LocalStorage
from .file_saver import FileSaver, read_with_retry


class Stat(NamedTuple):
    """What the backup uses of a file's lstat or fstat, as it travels between processes."""
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


def _received(status: tuple) -> tuple:
    if status[0] != "ok":
        return status
    fst, chunks, sparse, nread, xattrs = status[2]
    return "ok", status[1], (Stat(*fst), chunks, sparse, nread, xattrs)


# -- the reader process ------------------------------------------------------------
def reader_main() -> None:
    """Entry point of a reader process: python -c '...reader_main()' FD PARENT_PID."""
    run_child("reader process", lambda conn: _serve(conn, conn.recv()))


def others_busy(busy, me: int) -> bool:
    """Whether every reader but `me` has a batch, by the busy map (bytes: batches each has)."""
    # busy[i] is an int; iterating an mmap gives 1-byte bytes, and b"\0" is true (help was
    # never given that way)
    return all(busy[i] for i in range(len(busy)) if i != me)


def _serve(conn, params: dict) -> None:
    me = params["me"]
    with open(params["busy"], "rb") as f:
        busy = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    session = ReaderSession(LocalStorage(params["repo"]), SharedClaims(params["claims"]), params["index"],
                            conn.send, params["levels"], params["pack_size"])
    helper: List[concurrent.futures.ThreadPoolExecutor] = []

    def help(fn, *args):
        """A large file's chunks compressed by a second thread too while another
        reader has nothing to do (the last large files are not compressed on one core)."""
        if others_busy(busy, me):
            return None
        if not helper:
            helper.append(concurrent.futures.ThreadPoolExecutor(1, "chunkrepo-help"))
        return helper[0].submit(fn, *args)

    saver = FileSaver(session, params["chunker"], help=help)
    all_xattrs = params["all_xattrs"]
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                break
            _, no, items = msg
            saver.deferred = deferred = []
            out = [_sendable(read_with_retry(saver, path, Stat(*st), all_xattrs)) for path, st in items]
            session.store_new(deferred)
            conn.send(("done", no, out))
        session.seal()
        conn.send(("bye",))
    except BaseException:
        session.abort()
        raise


# -- the backup's side ----------------------------------------------------------------
class ReaderProcs(ChildProcs):
    """n reader processes fed batches; submit() returns a Future of the batch's entries."""

    what = "reader process"

    def __init__(self, session, repo_path: str, chunker, all_xattrs: bool, n: int):
        super().__init__()
        self.session = session
        claims, index_path = session.share_claims()
        levels = session.levels
        self.pending: dict = {}          # batch number -> (future, finish, cost)
        self.load = [0] * n              # bytes (and opens) handed to each reader, not done yet
        self.busy = [0] * n              # batches handed to each reader, not done yet
        # ... and the same, at most 255, in a file the readers map: a reader reading a large
        # file looks whether another one is idle (help)
        busy_path = os.path.join(claims, "busy")
        with open(busy_path, "wb") as f:
            f.write(bytes(n))
        with open(busy_path, "r+b") as f:
            self.busy_map = mmap.mmap(f.fileno(), n)
        self._no = 0
        try:
            for me in range(n):
                ours, theirs = socket.socketpair()
                with theirs:
                    self.procs.append(start_child("chunkrepo.ops.backup.reader_procs:reader_main",
                                                  (theirs.fileno(),)))
                conn = Connection(ours.detach())
                self.conns.append(conn)
                conn.send({"repo": repo_path, "claims": claims, "index": index_path, "levels": levels,
                           "pack_size": session.pack_size, "chunker": chunker, "all_xattrs": all_xattrs,
                           "busy": busy_path, "me": me})
        except OSError as e:
            self.kill()
            raise StorageError(f"cannot start a reader process: {e}") from None
        self.start_receivers("reader")

    def submit(self, items, finish, nbytes: int) -> concurrent.futures.Future:
        """A Future of finish(the statuses of items' files), finish run by a receiving thread."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        cost = nbytes + (1 << 20)      # a batch of small files costs its opens
        with self.lock:
            if self.failure is not None:
                raise self.failure
            i = min(range(len(self.load)), key=self.load.__getitem__)
            self.load[i] += cost
            self.busy[i] += 1
            self._no += 1
            self.pending[self._no] = (fut, finish, cost)
            self.busy_map[i] = min(self.busy[i], 255)
        try:
            self.conns[i].send(("batch", self._no, items))
        except OSError:
            err = self.ended(i)
            self.fail(err)
            raise err from None
        return fut

    def handle(self, i: int, msg: tuple) -> None:
        if msg[0] == "done":
            with self.lock:
                fut, finish, cost = self.pending.pop(msg[1])
                self.load[i] -= cost
                self.busy[i] -= 1
                self.busy_map[i] = min(self.busy[i], 255)
            try:
                fut.set_result(finish([_received(s) for s in msg[2]]))
            except BaseException as e:
                fut.set_exception(e)
        elif msg[0] == "sealed":
            self.session.adopt_sealed(*msg[1:])

    def _take_pending(self) -> list:
        futs = [f for f, _, _ in self.pending.values()]
        self.pending.clear()
        return futs

    def kill(self) -> None:
        """End the readers whatever they are doing (the backup failed or was stopped)."""
        super().kill()
        try:      # their open packs' temporaries (the writer lock is still held: no one else's)
            self.session.storage.remove_stale_temporaries("packs")
        except OSError:
            pass
