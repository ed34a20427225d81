"""Reading the chunks of upcoming files ahead of a consumer (tar, restore).

The consumer walks entries in order; a small thread pool reads, decompresses
and verifies the next chunks meanwhile (zstd and blake3 release the GIL).  The
chunks of all files form one ordered stream, and at most `budget` raw bytes of
it are in flight or waiting, so memory stays flat whatever the file sizes.

A file of one chunk (most files) is not looked up in the index by the
consumer's thread: its chunk's size is the file's data length, and the read
task looks the chunk up.  Every lookup releases the GIL, and on the
consumer's thread each one waited for a reader to hand it back: the walk is
the part that runs on one core.  Every lookup, on either side, is made in read
views opened together when the reader started (ops.read_snapshot): the
consumer's, and one per read thread, which a task borrows while it runs.  A
transaction opened per task would miss the chunks of a backup that a forget
and prune removed meanwhile.
"""

import collections
import concurrent.futures
import contextlib
import queue
from typing import Iterable, Iterator, Optional, Sequence

from ..model.nodes import REG

_DEFAULT_BUDGET = 16 << 20
_MAX_ENTRIES_AHEAD = 4096
_BATCH_COUNT = 64          # chunks per read task (their bytes: the repository's read_plan)
_LATER = object()          # in place of an index entry: the read task looks the chunk up


class _ChunkStream:
    """The ordered stream of chunks, read in batches by the pool.

    A batch is a run of consecutive chunks (up to read_plan.batch_bytes or _BATCH_COUNT):
    one task for the pool, and one ranged read for the neighbours among them
    (Repository.read_blobs).  Few tasks keep the threads from trading the GIL
    for every small file.
    """

    def __init__(self, repo, view, spare: Sequence, pool, budget: int, workers: int, batch_bytes: int):
        self.repo, self.view, self.pool, self.budget = repo, view, pool, budget
        self.spare: "queue.SimpleQueue" = queue.SimpleQueue()   # the read threads' views, not in use
        for v in spare:
            self.spare.put(v)
        self.workers, self.batch_bytes = workers, batch_bytes
        self.waiting: "collections.deque[tuple]" = collections.deque()   # (id, entry) not yet submitted
        self.wbytes = 0                                                  # their raw bytes
        self.inflight: "collections.deque[tuple]" = collections.deque()  # (future, raw bytes)
        self.current: list = []     # results of the batch being consumed, reversed
        self.nbytes = 0             # raw bytes submitted and not yet consumed

    def add(self, ids, size: Optional[int] = None) -> list:
        """Queue ids; returns their raw sizes (None for a chunk the index lacks).
        size: the raw size of a single chunk, known from its file (looked up later)."""
        if size is not None and len(ids) == 1:
            self.waiting.append((ids[0], _LATER, size))
            self.wbytes += size
            self.fill()
            return [size]
        chunk = self.view.chunk
        sizes = []
        for cid in ids:
            e = chunk(cid)
            n = e.raw_length if e is not None else 0
            self.waiting.append((cid, e, n))
            self.wbytes += n
            sizes.append(n if e is not None else None)
        self.fill()
        return sizes

    def full(self) -> bool:
        """A whole batch is waiting (the budget holds it back, or it is about to go)."""
        return len(self.waiting) >= _BATCH_COUNT or self.wbytes >= self.batch_bytes

    def fill(self, force: bool = False) -> None:
        """Submit whole batches while the budget allows; a partial one only when the
        workers would otherwise idle, or when forced (the consumer waits for it)."""
        waiting = self.waiting
        while waiting and (self.nbytes < self.budget or not self.inflight):
            if not force and len(self.inflight) >= self.workers and not self.full():
                return
            batch, size = [], 0
            while waiting and len(batch) < _BATCH_COUNT:
                cid, e, n = waiting[0]
                if batch and size + n > self.batch_bytes:
                    break
                waiting.popleft()
                batch.append((cid, e))
                size += n
            self.wbytes -= size
            self.inflight.append((self.pool.submit(self.read, batch), size))
            self.nbytes += size

    def read(self, batch: list) -> list:
        """A read task: the batch's chunks (looking up those queued without an entry)."""
        if any(e is _LATER for _, e in batch):
            view = self.spare.get()     # one per read thread: never waits
            try:
                chunk = view.chunk
                batch = [(cid, chunk(cid) if e is _LATER else e) for cid, e in batch]
            finally:
                self.spare.put(view)
        return self.repo.read_blobs(batch)

    def next(self) -> bytes:
        if not self.current:
            if not self.inflight:
                self.fill(force=True)
            fut, size = self.inflight.popleft()
            self.nbytes -= size
            self.fill()
            self.current = fut.result()
            self.current.reverse()
        item = self.current.pop()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.waiting.clear()
        self.wbytes = 0
        for fut, _ in self.inflight:
            fut.cancel()
        self.inflight.clear()
        self.current = []


class Prefetched:
    """The chunks of one file, in order, out of the shared stream."""

    __slots__ = ("_stream", "_left", "sizes")

    def __init__(self, stream: _ChunkStream, sizes: list):
        self._stream = stream
        self._left = len(sizes)
        self.sizes = sizes      # raw size of each chunk (None: not in the index)

    def data(self) -> Iterator[bytes]:
        while self._left:
            self._left -= 1
            yield self._stream.next()

    def skip_rest(self) -> None:
        """Drop what the consumer did not take, keeping the stream aligned."""
        while self._left:
            self._left -= 1
            try:
                self._stream.next()
            except Exception:   # the consumer did not want these bytes, nor their errors
                pass


def _data_length(node) -> int:
    """The bytes a file's chunks hold (its size but for the holes)."""
    return node.size if node.sparse is None else sum(n for _, n in node.sparse)


def _wants_data(e) -> bool:
    return e.node.kind == REG and e.hardlink_to is None and bool(e.node.chunks)


def prefetch_threads(repo) -> int:
    """The read threads prefetch runs (one read view each, besides the consumer's)."""
    return max(1, repo.read_plan.threads)


def prefetch(repo, entries: Iterable, budget: int = _DEFAULT_BUDGET, wants_data=_wants_data,
             views: Optional[Sequence] = None) -> Iterator[tuple]:
    """Yield (entry, Prefetched or None) in the order of entries.

    The consumer may read an entry's chunks through Prefetched.data() before it
    asks for the next entry; chunks it leaves are read and dropped.  The
    repository's read_plan sets the threads and the size of a read task.
    views: the read views to look chunks up in, opened together when the reader
    started (ops.read_snapshot): views[0] the consumer's (used on its thread
    only), then one per read thread (prefetch_threads); without them prefetch
    opens its own when it starts.
    """
    plan = repo.read_plan
    with contextlib.ExitStack() as opened:
        if views is None:
            views = [opened.enter_context(repo.index.read()) for _ in range(prefetch_threads(repo) + 1)]
        workers = len(views) - 1
        pool = concurrent.futures.ThreadPoolExecutor(workers, "chunkrepo-prefetch")
        stream = _ChunkStream(repo, views[0], views[1:], pool, budget, workers, max(plan.batch_bytes, 1))
        ahead: "collections.deque[tuple]" = collections.deque()
        try:
            it = iter(entries)
            exhausted = False
            while True:
                while not exhausted and not stream.full() and len(ahead) < _MAX_ENTRIES_AHEAD:
                    e = next(it, None)
                    if e is None:
                        exhausted = True
                        stream.fill(force=True)     # the last, partial batch
                        break
                    pf = None
                    if wants_data(e):
                        pf = Prefetched(stream, stream.add(e.node.chunk_ids(), _data_length(e.node)))
                    ahead.append((e, pf))
                if not ahead:
                    return
                e, pf = ahead.popleft()
                yield e, pf
                if pf is not None:
                    pf.skip_rest()
        finally:
            if ahead:
                stream.cancel()
            pool.shutdown(wait=True)     # before the views close: no task uses one after
