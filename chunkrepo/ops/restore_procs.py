"""Restore processes: a restore's files written by processes of their own, each with
its own interpreter lock (docs/design.md, "Restore processes").

With worker threads only, a restore's Python (per file: the index lookup, the
open, write, chown, utime and close calls, the bookkeeping) took turns at one
interpreter lock, and each of two workers was on a core about half the time.  So
once a local restore has queued enough (restore._PROCESSES_AFTER), it starts one
process per worker.  The restore's own process keeps the walk, the directories,
symlinks, special files and hard links, and every directory's metadata.  Each of
its worker threads then hands its batches to one process and waits for the answer:
the process looks the batch's chunks up in its own read snapshot of the index,
reads, decodes and verifies them, creates and fills each file relative to its
parent directory's descriptor (passed with the batch, SCM_RIGHTS), and sets the
file's metadata, with the same code as a worker thread (restore._Restorer.do_batch).
The answer says which files were finished, the bytes written, and the errors; the
thread then does what it does for its own batches (a directory is finished once its
last file is, a hard link waits for its first name).

A process's read snapshot is opened when it starts, after the restore's own: it
must still hold the backup (a forget and prune in between fails the restore with
BackupRemoved, as one before the start does).  Processes are started like the
backup's readers (process.start_child): they die with the restore, and one that
ends unexpectedly fails the restore in one line.
"""

import concurrent.futures
import os
import socket
import threading
from multiprocessing.connection import Connection
from typing import List

from ..errors import StorageError
from ..process import ChildProcs, portable, run_child, start_child
from ..repository.repository import Repository
from .read_snapshot import BackupRemoved, holds_backup
from .restore import _Counts, _Dir, _Job, _Restorer

_ENTRY = "chunkrepo.ops.restore_procs:worker_main"


# -- the restore process -------------------------------------------------------------
def worker_main() -> None:
    """Entry point: python -c '...worker_main()' CONN_FD FDS_FD PARENT_PID."""
    run_child("restore process", lambda conn, fds: _serve(conn, socket.socket(fileno=fds), conn.recv()))


class _Writer(_Restorer):
    """A restore process's side of _Restorer: do_batch for the batches it is sent; the
    restore's own process finishes the files (finish_job only notes the outcome)."""

    def finish_job(self, job, ok, counts):
        job.ok = ok


def _serve(conn, fsock, params: dict) -> None:
    repo = Repository(params["repo"])
    w = _Writer(repo, params["root"], params["target"], "/", workers=1, backup_id=params["backup"])
    w.now, w.umask, w.created_owner = params["now"], params["umask"], params["created_owner"]
    with repo.index.read() as view:
        if params["backup"] is not None and not holds_backup(view, params["backup"], params["root"]):
            raise BackupRemoved(f"backup {params['backup']} was removed (forget and prune) while the "
                                f"restore started")
        reader = repo.blob_reader()
        while True:
            msg = conn.recv()
            if msg is None:
                break
            _, no, items, rels = msg
            _, fds, _, _ = socket.recv_fds(fsock, 1, len(rels))
            try:
                dirs = [_Dir(b"", fd, None, "", rel) for fd, rel in zip(fds, rels)]
                batch = [_Job(dirs[slot], name, node, shown, owner, ids)
                         for slot, name, node, shown, owner, ids in items]
                counts, nerr, nx = _Counts(), len(w.res.errors), w._xattr_unsupported
                w.do_batch(view, reader, batch, counts)
                fatal, w.fatal = w.fatal, None
                conn.send(("done", no, [j.ok for j in batch], counts.bytes, w.res.errors[nerr:],
                           w._xattr_unsupported - nx, fatal and portable(fatal, "restore process")))
            finally:
                for fd in fds:
                    os.close(fd)
    conn.send(("bye",))


# -- the restore's side ----------------------------------------------------------------
class RestoreProcs(ChildProcs):
    """n restore processes; run(i, batch, counts) has process i write a batch."""

    what = "restore process"

    def __init__(self, restorer, n: int):
        super().__init__()
        self.restorer = restorer
        self.pending: List[dict] = [{} for _ in range(n)]    # per process: batch number -> Future
        self._no = 0
        self.fsocks: List[socket.socket] = []     # the descriptors' sockets
        self.send_locks = [threading.Lock() for _ in range(n)]
        params = {"repo": restorer.repo.path, "root": restorer.root_tid, "backup": restorer.backup_id,
                  "target": restorer.target, "now": restorer.now, "umask": restorer.umask,
                  "created_owner": restorer.created_owner}
        try:
            for _ in range(n):
                ours, theirs = socket.socketpair()
                fours, ftheirs = socket.socketpair()
                with theirs, ftheirs:
                    self.procs.append(start_child(_ENTRY, (theirs.fileno(), ftheirs.fileno())))
                self.fsocks.append(fours)
                conn = Connection(ours.detach())
                self.conns.append(conn)
                conn.send(params)
        except OSError as e:
            self.kill()
            raise StorageError(f"cannot start a restore process: {e}") from None
        self.start_receivers("restore-proc")

    def run(self, i: int, batch: list, counts) -> list:
        """Process i writes the batch's files: [finished or not] per job (the caller runs
        finish_job); the bytes go to counts, the errors to the restore's result."""
        slots: dict = {}          # id(a parent directory) -> its place in dirs
        dirs: list = []
        for job in batch:
            if id(job.dir) not in slots:
                slots[id(job.dir)] = len(dirs)
                dirs.append(job.dir)
        items = [(slots[id(job.dir)], job.name, job.node, job.shown, job.owner, job.ids) for job in batch]
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.send_locks[i]:
            with self.lock:
                if self.failure is not None:
                    raise self.failure
                self._no += 1
                no = self._no
                self.pending[i][no] = fut
            try:
                socket.send_fds(self.fsocks[i], [b"f"], [d.fd for d in dirs])
                self.conns[i].send(("batch", no, items, [d.rel for d in dirs]))
            except OSError:
                err = self.ended(i)
                self.fail(err)
                raise err from None
        oks, nbytes, errors, no_xattrs, fatal = fut.result()
        r = self.restorer
        counts.bytes += nbytes
        r.res.errors.extend(errors)
        if no_xattrs:
            with r.lock:
                r._xattr_unsupported += no_xattrs
        if fatal is not None:
            r.fail(fatal)
        return oks

    def handle(self, i: int, msg: tuple) -> None:
        if msg[0] == "done":
            with self.lock:
                fut = self.pending[i].pop(msg[1])
            fut.set_result(msg[2:])

    def _take_pending(self) -> list:
        futs = [f for p in self.pending for f in p.values()]
        for p in self.pending:
            p.clear()
        return futs

    def release(self) -> None:
        super().release()
        for s in self.fsocks:
            s.close()
        self.fsocks = []
