"""Pinned chunk boundaries: a dependency upgrade must not silently change dedup."""

import io
import random

from chunkrepo.codec.chunking import Chunker, ChunkerParams
from chunkrepo.codec.hashing import hash_bytes
from chunkrepo.ops.backup.file_saver import FileSaver, _Reader

PARAMS = ChunkerParams()


def _data(n=12 << 20, seed=42):
    return random.Random(seed).randbytes(n)


def test_boundaries_are_pinned():
    data = _data()
    lengths = [len(c) for c in Chunker(PARAMS).cut_buffer(data)]
    assert lengths[:6] == PINNED_LENGTHS[:6]
    assert lengths == PINNED_LENGTHS
    first = next(iter(Chunker(PARAMS).cut_buffer(data)))
    assert hash_bytes(first).hex() == PINNED_FIRST_ID


def test_small_data_is_one_chunk():
    data = b"x" * 1000
    assert [bytes(c) for c in Chunker(PARAMS).cut_buffer(data)] == [data]
    assert list(Chunker(PARAMS).cut_buffer(b"")) == []


class _Session:
    def __init__(self):
        self.stored = {}

    def claim_chunk(self, cid):
        return cid not in self.stored

    def store_chunk(self, cid, data):
        self.stored[cid] = bytes(data)


class _FdLike:
    """Feeds the saver's buffered cutter in odd-sized reads, like a pipe or NFS."""

    def __init__(self, data, step):
        self.f = io.BytesIO(data)
        self.step = step
        self.total = 0

    def readinto(self, mv):
        n = self.f.readinto(mv[:self.step])
        self.total += n
        return n


def test_streaming_cut_equals_whole_buffer_cut():
    data = _data(30 << 20, seed=7)
    whole = [bytes(c) for c in Chunker(PARAMS).cut_buffer(data)]
    for step in (1 << 20, 3 * 1000 * 1000 + 17, 64 << 20):
        saver = FileSaver(_Session(), PARAMS)
        streamed = [bytes(c) for fill in saver._cut(_FdLike(data, step), len(data)) for c in fill]
        assert streamed == whole


def test_insert_changes_few_chunks():
    data = _data(20 << 20, seed=3)
    edited = data[:5000] + b"y" * 100 + data[5000:]
    a = {hash_bytes(c) for c in Chunker(PARAMS).cut_buffer(data)}
    b = {hash_bytes(c) for c in Chunker(PARAMS).cut_buffer(edited)}
    assert len(b - a) <= 2


def test_reader_over_extents_skips_holes(tmp_path):
    p = tmp_path / "sparse"
    with open(p, "wb") as f:
        f.truncate(10 << 20)
        f.seek(4 << 20)
        f.write(b"a" * 5000)
    import os
    fd = os.open(p, os.O_RDONLY)
    try:
        r = _Reader(fd, [[4 << 20, 5000]])
        buf = bytearray(1 << 20)
        n = r.readinto(memoryview(buf))
        assert bytes(buf[:n]) == b"a" * 5000 and r.readinto(memoryview(buf)) == 0
    finally:
        os.close(fd)


# Produced once by pyfastcdc 0.3.1 (FastCDC 2020, min 256 KiB, avg 1 MiB, max 4 MiB).
PINNED_LENGTHS = [2887635, 1497989, 1362853, 1120302, 581459, 1164261, 1297194, 2198069, 473150]
PINNED_FIRST_ID = "7433f6e625ddba3c8b5e148ae6ce3d12e3e84ab8d1747e50e2a6247e30d6df35"
