"""memcopy.Target: big copies by address (ctypes.memmove, GIL released), small ones by slice."""

import mmap
import os

import pytest

from chunkrepo.memcopy import MIN, Target


@pytest.mark.parametrize("n", [10, MIN - 1, MIN, 3 * MIN + 17])
def test_put_copies_bytes_writable_and_read_only_views_into_an_mmap(n):
    t = Target(mmap.mmap(-1, 4 * MIN + 4096))
    data = os.urandom(n + 100)
    t.put(5, data, n)                                  # bytes, first n of them
    assert t.buf[5:5 + n] == data[:n] and t.buf[5 + n] == 0
    backing = bytearray(os.urandom(n + 300))
    view = memoryview(backing)[200:200 + n]            # a writable view into a bigger buffer
    t.put(0, view, n)
    assert t.buf[:n] == bytes(view)
    ro = memoryview(bytes(backing))[7:7 + n]           # read-only, not bytes: the slice way
    t.put(1, ro, n)
    assert t.buf[1:1 + n] == bytes(ro)


@pytest.mark.parametrize("n", [100, MIN, 2 * MIN + 5])
def test_move_handles_overlap_both_ways(n):
    raw = os.urandom(3 * MIN + 64)
    t = Target(bytearray(raw))
    t.move(0, 33, n)                                   # down, overlapping when n > 33
    assert bytes(t.buf[:n]) == raw[33:33 + n]
    t = Target(bytearray(raw))
    t.move(33, 0, n)                                   # up, overlapping
    assert bytes(t.buf[33:33 + n]) == raw[:n] and bytes(t.buf[:33]) == raw[:33]


def test_a_target_pins_its_buffer():
    buf = bytearray(MIN)
    t = Target(buf)
    with pytest.raises(BufferError):
        buf.extend(b"x")                               # the address must stay valid
    assert t.address
