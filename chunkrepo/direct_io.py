"""Writing local files with O_DIRECT: whole aligned blocks skip the page cache.

A buffered write copies every byte into fresh page-cache pages, and in a VM
that costs more CPU than the copy itself (more than compressing the data);
the pages are written back later anyway.  A DirectWriter gathers what it is
given in a page-aligned buffer and writes each full buffer, and at the end the
aligned part of what is left, with O_DIRECT: set on the descriptor with fcntl
for those writes and cleared after, so a shared descriptor (stdout) keeps its
own flags and its file position is simply advanced.  Only the tail (under
ALIGN bytes) goes through the page cache.  The bytes written, and so the
file's size, are exactly those given: nothing is padded.

Where O_DIRECT is refused (EINVAL from fcntl or write: a filesystem without
direct I/O, a position that is not aligned), the writer goes on with buffered
writes, and its DirectIO remembers the refusal for the writers after it.  A
descriptor that is not a regular file (a pipe, a terminal) is always written
buffered.  Durability is the caller's business (fsync) either way.

CHUNKREPO_DIRECT_IO=0 in the environment turns O_DIRECT off.
"""

import errno
import fcntl
import mmap
import os
import stat
import threading

from .memcopy import Target

O_DIRECT = getattr(os, "O_DIRECT", 0)
ALIGN = 4096                 # offset, length and memory alignment of a direct write
ENV = "CHUNKREPO_DIRECT_IO"


class DirectIO:
    """Direct writes to one filesystem: whether it takes them, and buffers to reuse.

    block: the size of the buffer, i.e. of most direct writes (a multiple of ALIGN;
    bigger writes keep a disk busier, each one waits for the device)."""

    def __init__(self, block: int = 1 << 20, keep: int = 4):
        assert block % ALIGN == 0
        self.block = block
        self.enabled = bool(O_DIRECT) and os.environ.get(ENV, "1") != "0"
        self._keep = keep
        self._buffers: list = []
        self._lock = threading.Lock()

    def writer(self, fd: int) -> "DirectWriter":
        """A writer to fd from its current position; finish() or abort() it."""
        return DirectWriter(self, fd)

    def refused(self) -> None:
        self.enabled = False

    def take_buffer(self) -> Target:
        """A page-aligned buffer of `block` bytes (an mmap), as a memcopy.Target."""
        with self._lock:
            if self._buffers:
                return self._buffers.pop()
        return Target(mmap.mmap(-1, self.block))

    def give_buffer(self, buf: Target) -> None:
        with self._lock:
            if len(self._buffers) < self._keep:
                self._buffers.append(buf)

    def clear(self) -> None:
        with self._lock:
            self._buffers.clear()


class DirectWriter:
    """Writes a byte stream to fd, whole aligned blocks with O_DIRECT (see the module doc)."""

    __slots__ = ("_io", "_fd", "_target", "_buf", "_fill", "_direct", "_flags", "size", "direct_bytes")

    def __init__(self, io: DirectIO, fd: int):
        self._io = io
        self._fd = fd
        self._target = io.take_buffer()
        self._buf = self._target.buf
        self._fill = 0               # bytes gathered in _buf
        self._direct = io.enabled    # O_DIRECT still worth trying
        self._flags = None           # fd's own flags while O_DIRECT is set on it
        self.size = 0                # bytes given to write()
        self.direct_bytes = 0        # bytes that went out with O_DIRECT

    def write(self, data) -> None:
        if type(data) is bytes:     # most writes: a blob's header byte, a compressed blob
            end = self._fill + len(data)
            if end < len(self._buf):
                self._target.put(self._fill, data, len(data))
                self._fill = end
                self.size += len(data)
                return
        mv = memoryview(data).cast("B")
        self.size += len(mv)
        put, block = self._target.put, len(self._buf)
        while mv:
            take = min(block - self._fill, len(mv))
            put(self._fill, mv, take)
            self._fill += take
            mv = mv[take:]
            if self._fill == block:
                self._flush(block)

    def free_view(self, n: int):
        """A view of the next n bytes of the buffer, to fill in place and then advance(n):
        no copy.  None when n bytes do not fit before the buffer is full."""
        if self._fill + n > len(self._buf):
            return None
        return memoryview(self._buf)[self._fill:self._fill + n]

    def advance(self, n: int) -> None:
        """The n bytes of free_view(n) were filled: they are written like write()'s."""
        self.size += n
        self._fill += n
        if self._fill == len(self._buf):
            self._flush(self._fill)

    def finish(self) -> None:
        """Write what is gathered (its aligned part directly) and give the fd its flags back."""
        try:
            if self._fill:
                self._flush(self._fill - self._fill % ALIGN)
                self._buffered()
                _write_all(self._fd, memoryview(self._buf)[:self._fill])
                self._fill = 0
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop what is gathered and give the fd its flags back (idempotent)."""
        try:
            self._buffered()
        finally:
            if self._buf is not None:
                self._io.give_buffer(self._target)
                self._buf = self._target = None

    def _flush(self, n: int) -> None:
        """Write the first n (aligned) gathered bytes; keep the rest at the buffer's start."""
        if not n:
            return
        view = memoryview(self._buf)[:n]
        done = self._write_direct(view) if self._direct else 0
        if done < n:
            self._buffered()
            _write_all(self._fd, view[done:])
        rest = self._fill - n
        if rest:
            self._target.move(0, n, rest)
        self._fill = rest

    def _write_direct(self, view) -> int:
        fd = self._fd
        if self._flags is None:
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    self._direct = False
                    return 0
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | O_DIRECT)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self._refused()
                return 0
            self._flags = flags
        try:
            n = os.write(fd, view)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._refused()
            return 0
        self.direct_bytes += n
        if n < len(view):
            self._direct = False     # (a full disk is near) the rest goes buffered
        return n

    def _refused(self) -> None:
        self._direct = False
        self._io.refused()

    def _buffered(self) -> None:
        """Give fd its own flags back (before a buffered write, and at the end)."""
        if self._flags is not None:
            flags, self._flags = self._flags, None
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags)


def _write_all(fd: int, view) -> None:
    while view:
        view = view[os.write(fd, view):]
