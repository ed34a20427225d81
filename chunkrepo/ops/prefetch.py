"""Reading the chunks of upcoming files ahead of a consumer (tar, restore).

The consumer walks entries in order; a small thread pool reads, decompresses
and verifies the next chunks meanwhile (zstd and blake3 release the GIL).  The
chunks of all files form one ordered stream, and at most `budget` raw bytes of
it are in flight or waiting, so memory stays flat whatever the file sizes.
"""

import collections
import concurrent.futures
from typing import Iterable, Iterator, Optional

from ..model.nodes import REG

_DEFAULT_BUDGET = 16 << 20
_MAX_ENTRIES_AHEAD = 4096


_MAX_GAP = 256 << 10      # bytes of other blobs a coalesced read may carry along
_LOOKAHEAD = 256          # chunks waiting before a coalesced read is cut at the end of what is known


class _ChunkStream:
    def __init__(self, repo, view, pool, budget: int, span: int = 0):
        self.repo, self.view, self.pool, self.budget, self.span = repo, view, pool, budget, span
        self.waiting: "collections.deque[bytes]" = collections.deque()   # ids not yet submitted
        self.inflight: "collections.deque[tuple]" = collections.deque()  # (future, raw size)
        self.ready: "collections.deque" = collections.deque()            # data or exceptions, in order
        self.nbytes = 0
        self.final = False

    def add(self, ids) -> None:
        self.waiting.extend(ids)
        self.fill()

    def full(self) -> bool:
        if not self.span:
            return bool(self.waiting)
        return len(self.waiting) >= _LOOKAHEAD or (bool(self.waiting) and self.nbytes >= self.budget)

    def finish(self) -> None:
        """No more chunks will be added: submit the tail."""
        self.final = True
        self.fill()

    def fill(self, force: bool = False) -> None:
        while self.waiting and (self.nbytes < self.budget or not self.inflight):
            if self.span and not (force or self.final) and len(self.waiting) < _LOOKAHEAD:
                return      # wait for the chunks a coalesced read could take along
            batch = self._take()
            size = sum(e.raw_length for _, e in batch if e is not None)
            self.inflight.append((self.pool.submit(_read, self.repo, batch), size))
            self.nbytes += size

    def _take(self) -> list:
        """The next chunk, with the chunks after it stored right behind it in the same pack
        (up to span bytes) when reads are coalesced."""
        cid = self.waiting.popleft()
        first = self.view.chunk(cid)
        batch = [(cid, first)]
        while self.span and first is not None and self.waiting:
            nxt = self.view.chunk(self.waiting[0])
            end = batch[-1][1].offset + batch[-1][1].length
            if (nxt is None or nxt.pack != first.pack or not end <= nxt.offset <= end + _MAX_GAP
                    or nxt.offset + nxt.length - first.offset > self.span):
                break
            batch.append((self.waiting.popleft(), nxt))
        return batch

    def next(self) -> bytes:
        if not self.ready:
            if not self.inflight:
                self.fill(force=True)
            fut, size = self.inflight.popleft()
            self.nbytes -= size
            self.fill()
            self.ready.extend(fut.result())
        item = self.ready.popleft()
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self) -> None:
        self.waiting.clear()
        self.ready.clear()
        for fut, _ in self.inflight:
            fut.cancel()
        self.inflight.clear()


class Prefetched:
    """The chunks of one file, in order, out of the shared stream."""

    __slots__ = ("_stream", "_left")

    def __init__(self, stream: _ChunkStream, count: int):
        self._stream = stream
        self._left = count

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


def _wants_data(e) -> bool:
    return e.node.kind == REG and e.hardlink_to is None and bool(e.node.chunks)


def prefetch(repo, entries: Iterable, workers: Optional[int] = None, budget: int = _DEFAULT_BUDGET,
             wants_data=_wants_data) -> Iterator[tuple]:
    """Yield (entry, Prefetched or None) in the order of entries.

    The consumer may read an entry's chunks through Prefetched.data() before it
    asks for the next entry; chunks it leaves are read and dropped.  The
    repository's read_plan sets the threads (unless workers is given) and
    whether neighbouring chunks of a pack are read with one request.
    """
    threads, span = repo.read_plan
    pool = concurrent.futures.ThreadPoolExecutor(workers or threads, "chunkrepo-prefetch")
    ahead: "collections.deque[tuple]" = collections.deque()
    try:
        with repo.index.read() as view:
            stream = _ChunkStream(repo, view, pool, budget, span)
            it = iter(entries)
            exhausted = False
            while True:
                while not exhausted and not stream.full() and len(ahead) < _MAX_ENTRIES_AHEAD:
                    e = next(it, None)
                    if e is None:
                        exhausted = True
                        stream.finish()
                        break
                    pf = None
                    if wants_data(e):
                        ids = e.node.chunk_ids()
                        stream.add(ids)
                        pf = Prefetched(stream, len(ids))
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
        pool.shutdown(wait=True)


def _read(repo, batch) -> list:
    """The data of a batch from _take (or the exception reading each chunk)."""
    cid, entry = batch[0]
    if len(batch) > 1:
        return repo.read_blobs([(e, c) for c, e in batch])
    try:
        if entry is None:
            return [repo.read_chunk(cid)]     # raises IntegrityError: not in the index
        return [repo.read_blob(entry, cid)]
    except Exception as e:
        return [e]
