"""Writing a byte stream to a file object from a background thread (tar output).

Writing a large archive into a file is mostly kernel time (copying into the
page cache), and os.write releases the GIL: a thread that only writes lets
that copy overlap the producer's work (headers, the walk, decompression
hand-offs) instead of following it.  Pieces smaller than 1 MiB are gathered
into reused 1 MiB buffers (one hand-off per MiB: handing over every chunk of
64 KiB or more cost more system time than the copy); bigger ones are handed
over as they are, never copied.  At most _QUEUED bytes wait (the producer waits beyond), so
memory stays bounded.  A write error is raised to the producer at its next
write or at close().

With direct=True and out a regular file (tar -o FILE), the thread writes
to its descriptor with O_DIRECT in 4 MiB blocks (chunkrepo.direct_io): the
archive does not go through the page cache, which cuts the system time of
writing it to a third and, on this kind of disk, is faster than buffered
writes anyway.  out is flushed first.  O_DIRECT is set on the descriptor's
open file description for the writes and cleared at the end, so only a
caller whose descriptor no other process shares asks for it (not stdout: a
process killed mid-way would leave the flag to the shell's next writer).
"""

import os
import queue
import stat
import threading

from ..direct_io import DirectIO

_BUF = 1 << 20          # gathering buffer for small pieces
_DIRECT = _BUF          # pieces this big go out as they are
_QUEUED = 4 << 20       # bytes handed over and not yet written
_DIRECT_BLOCK = 4 << 20  # bytes per O_DIRECT write to a regular file (bigger keeps a disk busier)


class StreamOut:
    """write() from one producer thread; close() (or abort()) once at the end.

    Pieces handed to write() must not change afterwards (bytes, or views of
    bytes; small pieces are copied at once)."""

    def __init__(self, out, direct: bool = False):
        self._direct = _direct_writer(out) if direct else None
        self._out = self._direct if self._direct is not None else out
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._room = threading.Condition(threading.Lock())
        self._queued = 0        # bytes in the queue (under _room)
        self._free: "queue.SimpleQueue" = queue.SimpleQueue()   # gathering buffers written out
        self._buf = bytearray(_BUF)
        self._pos = 0
        self._error = None
        self._thread = threading.Thread(target=self._run, name="chunkrepo-write", daemon=True)
        self._thread.start()

    def write(self, data) -> None:
        n = len(data)
        if n >= _DIRECT:
            self._hand_buffer()
            self._put(data, None)
            return
        if self._pos + n > _BUF:
            self._hand_buffer()
        self._buf[self._pos:self._pos + n] = data
        self._pos += n

    def close(self) -> None:
        """Write what is left and wait for it; raises the writing thread's error."""
        self._hand_buffer()
        self._stop()
        if self._direct is not None:
            try:
                if self._error is None:
                    self._direct.finish()
            finally:
                self._direct.abort()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop without writing what is still queued (the producer failed)."""
        self._error = self._error or _Stopped()
        self._stop()
        if self._direct is not None:
            self._direct.abort()

    def _hand_buffer(self) -> None:
        if self._pos:
            self._put(memoryview(self._buf)[:self._pos], self._buf)
            try:
                self._buf = self._free.get_nowait()
            except queue.Empty:
                self._buf = bytearray(_BUF)
            self._pos = 0

    def _put(self, piece, own) -> None:
        """own: our gathering buffer that piece views (reused once written), or None."""
        if self._error is not None:
            raise self._error
        n = len(piece)
        with self._room:
            while self._queued and self._queued + n > _QUEUED and self._thread.is_alive():
                self._room.wait()
            self._queued += n
        self._queue.put((piece, own))

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        get, write = self._queue.get, self._out.write
        while True:
            item = get()
            if item is None:
                return
            piece, own = item
            if self._error is None:
                try:
                    write(piece)
                except BaseException as e:     # raised to the producer
                    self._error = e
            n = len(piece)
            if own is not None:
                piece.release()
                self._free.put(own)
            with self._room:
                self._queued -= n
                self._room.notify()


def _direct_writer(out):
    """A DirectWriter to out's descriptor when it is a regular file, else None."""
    try:
        fd = out.fileno()
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except (AttributeError, OSError, ValueError):     # io.UnsupportedOperation is both of the last two
        return None
    direct = DirectIO(_DIRECT_BLOCK, keep=0)
    if not regular or not direct.enabled:
        return None
    out.flush()
    return direct.writer(fd)


class _Stopped(Exception):
    """The producer stopped the stream."""
