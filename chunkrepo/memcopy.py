"""Copies of big buffers without holding the GIL.

A slice assignment (`buf[a:b] = data`) copies with the GIL held: a backup
copies every compressed blob into a pack's write buffer that way, ~1 GB at
scale 1.0, and the other threads wait for the GIL meanwhile.  ctypes calls a C
function with the GIL released, so `ctypes.memmove` copies the same bytes
while the other threads run Python.  The foreign call costs ~1 us more than a
slice assignment: copies under MIN bytes keep the slice assignment.
"""

import ctypes

MIN = 64 << 10


class Target:
    """A writable buffer (bytearray, mmap) that big copies go into by address.

    Holds an export of the buffer while it lives: the buffer cannot be resized
    or closed meanwhile, so the address stays valid."""

    __slots__ = ("buf", "address", "_anchor")

    def __init__(self, buf):
        self.buf = buf
        self._anchor = (ctypes.c_char * len(buf)).from_buffer(buf)
        self.address = ctypes.addressof(self._anchor)

    def put(self, offset: int, data, n: int) -> None:
        """buf[offset:offset + n] = data[:n] (n <= len(data), the range inside buf)."""
        if n >= MIN:
            src = _source(data)
            if src is not None:
                ctypes.memmove(self.address + offset, src[0], n)
                return
        self.buf[offset:offset + n] = data[:n] if n < len(data) else data

    def move(self, dest: int, src: int, n: int) -> None:
        """buf[dest:dest + n] = buf[src:src + n] (the ranges may overlap)."""
        if n >= MIN:
            ctypes.memmove(self.address + dest, self.address + src, n)
        else:
            self.buf[dest:dest + n] = self.buf[src:src + n]


def _source(data):
    """(address, anchor) of data's first byte, or None for a read-only buffer that is not bytes;
    the anchor keeps the address valid while the caller holds it."""
    if type(data) is bytes:
        return ctypes.cast(data, ctypes.c_void_p).value, data
    try:
        anchor = ctypes.c_char.from_buffer(data)
    except (TypeError, ValueError):      # read-only, or not contiguous
        return None
    return ctypes.addressof(anchor), anchor
