"""DirectWriter: exactly the bytes given, whole aligned blocks with O_DIRECT where the
filesystem takes it, buffered where O_DIRECT is off or refused, the descriptor's flags
given back."""

import errno
import fcntl
import mmap
import os
import random
import threading

import pytest

from chunkrepo.direct_io import ALIGN, ENV, O_DIRECT, DirectIO

MiB = 1 << 20
BLOCK = 64 << 10
SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, BLOCK - 1, BLOCK, BLOCK + 1, MiB - 1, MiB, MiB + 1, 3 * BLOCK + 4097]


def _direct_refusal(path) -> str:
    """What this filesystem does with O_DIRECT: 'refused', 'aligned' (only aligned writes)
    or 'any' (an unaligned write too, e.g. tmpfs, whose direct I/O is buffered)."""
    p = os.path.join(path, "probe")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | O_DIRECT)
        except OSError:
            return "refused"
        buf = mmap.mmap(-1, 2 * ALIGN)
        try:
            os.write(fd, memoryview(buf)[:ALIGN + 1])
        except OSError as e:
            if e.errno == errno.EINVAL:
                return "aligned"
            raise
        return "any"
    finally:
        os.close(fd)
        os.unlink(p)


def _write(io, path, data, piece: int, prefix=b""):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if prefix:
            os.write(fd, prefix)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        w = io.writer(fd)
        for i in range(0, len(data), piece):
            w.write(memoryview(data)[i:i + piece])
        w.finish()
        assert fcntl.fcntl(fd, fcntl.F_GETFL) == flags      # O_DIRECT is off again
        assert w.size == len(data)
    finally:
        os.close(fd)
    return w


@pytest.mark.skipif(not O_DIRECT, reason="no O_DIRECT on this platform")
@pytest.mark.parametrize("size", SIZES)
def test_every_length_round_trips_with_its_aligned_part_written_directly(tmp_path, size):
    if _direct_refusal(tmp_path) == "refused":
        pytest.skip("this filesystem refuses O_DIRECT")
    data = random.Random(size).randbytes(size)
    io = DirectIO(BLOCK)
    for piece in (7777, BLOCK, 3 * BLOCK + 1):
        path = tmp_path / f"f{piece}"
        w = _write(io, path, data, piece)
        assert path.read_bytes() == data
        assert os.path.getsize(path) == size
        assert w.direct_bytes == size - size % ALIGN      # only the tail was buffered
    assert io.enabled


@pytest.mark.parametrize("size", [0, ALIGN - 1, MiB + 1])
def test_with_o_direct_off_everything_is_written_buffered(tmp_path, monkeypatch, size):
    monkeypatch.setenv(ENV, "0")
    data = random.Random(size).randbytes(size)
    io = DirectIO(BLOCK)
    w = _write(io, tmp_path / "f", data, 10_000)
    assert (tmp_path / "f").read_bytes() == data
    assert w.direct_bytes == 0 and not io.enabled


@pytest.mark.skipif(not O_DIRECT, reason="no O_DIRECT on this platform")
def test_an_unaligned_position_is_refused_and_the_rest_goes_buffered(tmp_path):
    """A descriptor that already holds one byte (stdout appended to a file): the direct
    write is refused (EINVAL) where the filesystem needs alignment; nothing is lost."""
    kind = _direct_refusal(tmp_path)
    data = random.Random(1).randbytes(2 * BLOCK + 5)
    io = DirectIO(BLOCK)
    w = _write(io, tmp_path / "f", data, 5000, prefix=b"x")
    assert (tmp_path / "f").read_bytes() == b"x" + data
    if kind != "any":        # (tmpfs takes any write: its direct I/O is buffered)
        assert w.direct_bytes == 0 and not io.enabled     # refused once: buffered from then on
        w2 = _write(io, tmp_path / "g", data, 5000)
        assert (tmp_path / "g").read_bytes() == data and w2.direct_bytes == 0


def test_a_pipe_is_written_buffered_and_does_not_turn_o_direct_off(tmp_path):
    r, wfd = os.pipe()
    data = random.Random(2).randbytes(3 * BLOCK + 3)
    got = []
    reader = threading.Thread(target=lambda: got.append(_read_all(r)))
    reader.start()
    io = DirectIO(BLOCK)
    try:
        w = io.writer(wfd)
        w.write(data)
        w.finish()
    finally:
        os.close(wfd)
    reader.join()
    os.close(r)
    assert got == [data]
    assert w.direct_bytes == 0 and io.enabled == bool(O_DIRECT)


def _read_all(fd) -> bytes:
    out = []
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            return b"".join(out)
        out.append(b)


@pytest.mark.skipif(not O_DIRECT, reason="no O_DIRECT on this platform")
def test_abort_gives_the_flags_back_and_writes_no_tail(tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        w = DirectIO(BLOCK).writer(fd)
        w.write(bytes(BLOCK + 10))        # one block written, 10 bytes gathered
        w.abort()
        w.abort()
        assert fcntl.fcntl(fd, fcntl.F_GETFL) == flags
    finally:
        os.close(fd)
    assert os.path.getsize(tmp_path / "f") == BLOCK


@pytest.mark.parametrize("pieces", [[100, BLOCK, 5, BLOCK - 105, 3 * ALIGN], [BLOCK, BLOCK + 1, 1, 7777]])
def test_filling_the_buffer_in_place_writes_what_write_would(tmp_path, pieces):
    """free_view(n)/advance(n) (a decoder fills the buffer, no copy) mixed with write():
    the same bytes; a piece that does not fit before the buffer is full gets no view."""
    rnd = random.Random(len(pieces))
    data = rnd.randbytes(sum(pieces))
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        w = DirectIO(BLOCK).writer(fd)
        at = filled = 0
        for n in pieces:
            room = w.free_view(n)
            assert (room is None) == (filled % BLOCK + n > BLOCK)
            if room is None:
                w.write(data[at:at + n])
            else:
                room[:] = data[at:at + n]
                w.advance(n)
            at += n
            filled += n
        w.finish()
        assert w.size == len(data)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
