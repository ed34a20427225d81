"""Reading the chunks of upcoming files ahead of a consumer (tar, restore).

The consumer walks entries in order; a small thread pool reads, decompresses
and verifies the next chunks meanwhile (zstd and blake3 release the GIL).  The
chunks of all files form one ordered stream, and at most `budget` raw bytes of
it are in flight or waiting, so memory stays flat whatever the file sizes.
"""

import collections
import concurrent.futures
from typing import Iterable, Iterator

from ..model.nodes import REG

_DEFAULT_BUDGET = 16 << 20
_MAX_ENTRIES_AHEAD = 4096


class _ChunkStream:
    def __init__(self, repo, view, pool, budget: int):
        self.repo, self.view, self.pool, self.budget = repo, view, pool, budget
        self.waiting: "collections.deque[bytes]" = collections.deque()   # ids not yet submitted
        self.inflight: "collections.deque[tuple]" = collections.deque()  # (future, raw size)
        self.nbytes = 0

    def add(self, ids) -> None:
        self.waiting.extend(ids)
        self.fill()

    def full(self) -> bool:
        return bool(self.waiting)

    def fill(self) -> None:
        while self.waiting and (self.nbytes < self.budget or not self.inflight):
            cid = self.waiting.popleft()
            entry = self.view.chunk(cid)
            size = entry.raw_length if entry is not None else 0
            self.inflight.append((self.pool.submit(_read, self.repo, cid, entry), size))
            self.nbytes += size

    def next(self) -> bytes:
        fut, size = self.inflight.popleft()
        self.nbytes -= size
        self.fill()
        return fut.result()

    def cancel(self) -> None:
        self.waiting.clear()
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


def prefetch(repo, entries: Iterable, workers: int = 2, budget: int = _DEFAULT_BUDGET,
             wants_data=_wants_data) -> Iterator[tuple]:
    """Yield (entry, Prefetched or None) in the order of entries.

    The consumer may read an entry's chunks through Prefetched.data() before it
    asks for the next entry; chunks it leaves are read and dropped.
    """
    pool = concurrent.futures.ThreadPoolExecutor(workers, "chunkrepo-prefetch")
    ahead: "collections.deque[tuple]" = collections.deque()
    try:
        with repo.index.read() as view:
            stream = _ChunkStream(repo, view, pool, budget)
            it = iter(entries)
            exhausted = False
            while True:
                while not exhausted and not stream.full() and len(ahead) < _MAX_ENTRIES_AHEAD:
                    e = next(it, None)
                    if e is None:
                        exhausted = True
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


def _read(repo, cid: bytes, entry) -> bytes:
    if entry is None:
        return repo.read_chunk(cid)     # raises IntegrityError: not in the index
    return repo.read_blob(entry, cid)
