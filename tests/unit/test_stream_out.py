"""StreamOut: the bytes arrive whole and in order; a write error reaches the producer."""

import errno
import fcntl
import io
import os
import random

import pytest

from chunkrepo.ops.stream_out import StreamOut


@pytest.mark.parametrize("direct", [False, True])
def test_pieces_of_every_size_arrive_in_order(tmp_path, direct):
    rnd = random.Random(7)
    pieces = []
    for _ in range(300):
        n = rnd.choice([0, 1, 511, 512, 4000, 65535, 65536, 300_000, (1 << 20) - 3, 1 << 20, 3 << 20])
        pieces.append(rnd.randbytes(n))
    path = tmp_path / "out"
    with open(path, "wb", buffering=1 << 20) as f:
        f.write(b"h" * 4096)             # buffered in f: flushed before the stream writes
        flags = fcntl.fcntl(f.fileno(), fcntl.F_GETFL)
        s = StreamOut(f, direct=direct)
        for i, p in enumerate(pieces):
            s.write(memoryview(p)[1:] if i % 3 == 0 and p else p)
        s.close()
        assert fcntl.fcntl(f.fileno(), fcntl.F_GETFL) == flags
    expected = b"h" * 4096 + b"".join(memoryview(p)[1:] if i % 3 == 0 and p else p for i, p in enumerate(pieces))
    assert path.read_bytes() == expected


def test_small_pieces_are_copied_at_once():
    out = io.BytesIO()
    s = StreamOut(out)
    buf = bytearray(b"abc")
    s.write(buf)
    buf[:] = b"xyz"          # the caller may reuse a small piece's buffer
    s.write(buf)
    s.close()
    assert out.getvalue() == b"abcxyz"


class _Full(io.RawIOBase):
    def writable(self):
        return True

    def write(self, b):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_write_error_is_raised_to_the_producer():
    s = StreamOut(_Full())
    with pytest.raises(OSError) as exc:
        for _ in range(100):
            s.write(bytes(1 << 20))
        s.close()
    assert exc.value.errno == errno.ENOSPC
    s.abort()       # stopping after the error is quiet


def test_abort_stops_without_writing_the_rest():
    out = io.BytesIO()
    s = StreamOut(out)
    s.write(b"x" * 10)
    s.abort()
    assert out.getvalue() in (b"", b"x" * 10)
    assert not s._thread.is_alive()
