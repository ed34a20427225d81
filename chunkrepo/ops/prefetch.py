"""Reading the chunks of upcoming files ahead of a consumer (tar, restore).

The consumer walks entries in order; a small thread pool reads, decompresses
and verifies the chunks of the next files meanwhile (zstd and blake3 release
the GIL), bounded by a byte budget so memory stays flat whatever the backup.
"""

import collections
import concurrent.futures
from typing import Iterable, Iterator, Optional

from ..model.nodes import REG

_DEFAULT_BUDGET = 48 << 20


class Prefetched:
    """A file's chunk futures, in order; data() yields their bytes."""

    __slots__ = ("futures",)

    def __init__(self, futures):
        self.futures = futures

    def data(self) -> Iterator[bytes]:
        for f in self.futures:
            yield f.result()


def prefetch(repo, entries: Iterable, workers: int = 2, budget: int = _DEFAULT_BUDGET,
             wants_data=None) -> Iterator[tuple]:
    """Yield (entry, Prefetched or None) in the order of entries.

    wants_data(entry) says whether an entry's content will be read (default:
    regular files that are not hard-link repeats).  At most `budget` raw bytes
    of chunks are read ahead of the consumer.
    """
    if wants_data is None:
        def wants_data(e):
            return e.node.kind == REG and e.hardlink_to is None and e.node.chunks
    pool = concurrent.futures.ThreadPoolExecutor(workers, "chunkrepo-prefetch")
    ahead: "collections.deque[tuple]" = collections.deque()
    inflight = 0
    try:
        with repo.index.read() as view:
            for e in entries:
                pf: Optional[Prefetched] = None
                size = 0
                if wants_data(e):
                    futures = []
                    for cid in e.node.chunk_ids():
                        entry = view.chunk(cid)
                        futures.append(pool.submit(_read, repo, cid, entry))
                        size += entry.raw_length if entry is not None else 0
                    pf = Prefetched(futures)
                ahead.append((e, pf, size))
                inflight += size
                while ahead and (inflight > budget or len(ahead) > 4096):
                    done = ahead.popleft()
                    inflight -= done[2]
                    yield done[0], done[1]
        while ahead:
            done = ahead.popleft()
            yield done[0], done[1]
    finally:
        for _, pf, _ in ahead:
            if pf is not None:
                for f in pf.futures:
                    f.cancel()
        pool.shutdown(wait=True)


def _read(repo, cid: bytes, entry) -> bytes:
    if entry is None:
        return repo.read_chunk(cid)     # raises IntegrityError: not in the index
    return repo.read_blob(entry, cid)
