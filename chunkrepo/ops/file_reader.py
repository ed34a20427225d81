"""A read-only file object over a stored file's chunks (backshift's File_like_pieces)."""

import bisect
import io
import os
from itertools import accumulate

from ..errors import LOST_WHY, ChunkrepoError, IntegrityError
from ..model import Node


class ChunkFile(io.RawIOBase):
    """Streams a regular file's content from the repository, holes included.

    The content is a 'data stream' (the concatenated chunks) laid out in the
    file by the node's sparse extents (or contiguously).  One decoded chunk is
    cached; memory stays at one chunk whatever the file's size.
    """

    def __init__(self, repo, node: Node, path: bytes = b"", view=None, sizes=None):
        """sizes: the raw size of each chunk when the caller looked them up already."""
        super().__init__()
        self._repo = repo
        self._node = node
        self._path = os.fsdecode(path)
        self._ids = node.chunk_ids()
        self._pos = 0
        self._cache = (-1, b"")
        if sizes is None or None in sizes:
            if view is None:
                with repo.index.read() as v:
                    sizes = [e.raw_length for e in chunk_entries(v, self._ids, self._path)]
            else:
                sizes = [e.raw_length for e in chunk_entries(view, self._ids, self._path)]
        self._starts = [0] + list(accumulate(sizes))   # data-stream offset of each chunk
        ext = node.sparse or [[0, self._starts[-1]]]
        self._ext_file = [e[0] for e in ext]
        self._ext_len = [e[1] for e in ext]
        self._ext_stream = [0] + list(accumulate(self._ext_len))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def size(self) -> int:
        return self._node.size

    @property
    def data_length(self) -> int:
        """The bytes of data the file holds: its size less its holes."""
        sparse = self._node.sparse
        return self._node.size if sparse is None else sum(e[1] for e in sparse)

    def _chunk(self, i: int) -> bytes:
        if self._cache[0] != i:
            try:
                self._cache = (i, self._repo.read_chunk(self._ids[i]))
            except ChunkrepoError as e:     # damaged data, or the storage failing (EIO)
                raise with_path(e, self._path) from None
        return self._cache[1]

    def _read_stream(self, soff: int, n: int) -> bytes:
        out = []
        while n > 0:
            i = bisect.bisect_right(self._starts, soff) - 1
            if i >= len(self._ids):
                break
            data = self._chunk(i)
            lo = soff - self._starts[i]
            piece = data[lo:lo + n]
            if not piece:
                break
            out.append(piece)
            soff += len(piece)
            n -= len(piece)
        return b"".join(out)

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        out = []
        while self._pos < end:
            k = bisect.bisect_right(self._ext_file, self._pos) - 1
            if k >= 0 and self._pos < self._ext_file[k] + self._ext_len[k]:
                n = min(end, self._ext_file[k] + self._ext_len[k]) - self._pos
                piece = self._read_stream(self._ext_stream[k] + self._pos - self._ext_file[k], n)
                if len(piece) != n:
                    raise IntegrityError(f"{self._path}: stored content is shorter than its size")
            else:   # a hole: zeros up to the next extent
                nxt = self._ext_file[k + 1] if k + 1 < len(self._ext_file) else self.size
                piece = bytes(min(end, nxt) - self._pos)
            out.append(piece)
            self._pos += len(piece)
        return b"".join(out)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        memoryview(b)[:len(data)] = data
        return len(data)

    def iter_data(self, chunks=None):
        """Yield (file offset, bytes) of each chunk's data, holes skipped (for streaming).

        chunks: the decoded chunks in order when the caller read them already
        (ops.prefetch); by default they are read here one by one.
        """
        soff = 0
        k = 0
        source = chunks if chunks is not None else (self._chunk(i) for i in range(len(self._ids)))
        for data in self._checked(source):
            view = memoryview(data)
            while view:
                while soff >= self._ext_stream[k + 1]:
                    k += 1
                    if k + 1 >= len(self._ext_stream):
                        raise IntegrityError(f"{self._path}: stored data is longer than the file's extents")
                take = min(len(view), self._ext_stream[k + 1] - soff)
                yield self._ext_file[k] + soff - self._ext_stream[k], view[:take]
                view = view[take:]
                soff += take

    def _checked(self, source):
        try:
            yield from source
        except ChunkrepoError as e:
            raise with_path(e, self._path) from None

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def chunk_entries(view, ids, path: str) -> list:
    """The index entries of a file's chunks; IntegrityError (naming path) for one the
    index lacks or that was lost with a damaged pack."""
    entries = []
    chunk = view.chunk
    for cid in ids:
        e = chunk(cid)
        if e is None:
            raise IntegrityError(f"{path}: chunk {cid.hex()} is missing from the index")
        if e.lost:
            raise IntegrityError(f"{path}: chunk {cid.hex()} was lost: {LOST_WHY}; "
                                 f"a backup of the unchanged file stores it again")
        entries.append(e)
    return entries


def with_path(e: ChunkrepoError, path: str) -> ChunkrepoError:
    """The same kind of error, its message naming the file (once)."""
    if not path or str(e).startswith(path) or path in str(e):
        return e
    return type(e)(f"{path}: {e}")
