"""Bounding how much of the LMDB map stays in the process's resident set.

LMDB reads through a shared, read-only mapping of data.mdb (no MDB_WRITEMAP:
writes go through pwrite).  Every page a lookup touches stays mapped, and
Linux maps the cached pages around a faulting one too (fault-around, 64 KiB),
so a walk over a large index leaves the whole file resident in the process:
~500 MiB of RSS for an index of a million files, although these are page-cache
pages the kernel can reclaim at any time.

MappedPages drops the process's mappings of those pages (madvise
MADV_DONTNEED) once the file-backed resident set has grown by a budget since
the last drop (8 MiB, after streaming reads and after point lookups alike;
a write session lowers the lookup budget to 2 MiB).  On
a shared file mapping that is a no-op for what readers see: the pages stay in
the page cache and the next access maps them again (a minor fault), also from
a read transaction open in another thread.  Nothing is
written through the map, so nothing can be lost.  Where the map or madvise
cannot be found (not Linux), it does nothing.
"""

import ctypes
import ctypes.util
import mmap
import os
import threading
from typing import Callable, Optional

# calls between two looks at /proc/self/statm, at most; fewer as the resident set nears
# its budget (one call per GROWTH_PER_CALL of room left): a fault maps the page's cached
# neighbours (fault-around, 64 KiB) or its whole large folio, which ext4 builds from
# LMDB's multi-page writes (up to 512 KiB seen on an index of 100k files), and a call
# may fault a few pages; 16 calls between looks let the map overshoot its budget by
# up to 3-4 MiB
CHECK_EVERY = 16
GROWTH_PER_CALL = 256 << 10
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _madvise():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def maps_of(path: str) -> set:
    """(start, length) of every mapping of the file at path in this process."""
    out = set()
    try:
        st = os.stat(path)
        real = os.path.realpath(path)
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if (len(parts) == 6 and int(parts[4]) == st.st_ino
                        and os.path.realpath(parts[5].rstrip("\n")) == real):
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    out.add((lo, hi - lo))
    except (OSError, ValueError):
        return set()
    return out


def _shared_resident(fd: int) -> int:
    """Bytes of file-backed (and shared) memory resident in this process, from its
    /proc/self/statm open at fd: one pread (a look comes every CHECK_EVERY lookups,
    and each system call lets the reader threads take the GIL from the walk)."""
    return int(os.pread(fd, 256, 0).split()[2]) * _PAGE


class MappedPages:
    """Keeps the resident part of one mapping of a file within a budget.

    Two budgets: reads that stream through the file (records, cursors) never
    come back to a page, so their pages are dropped once they add up to
    `budget`; point lookups and write transactions (random keys: chunk ids)
    come back to the same B-tree pages often, and dropping those costs a
    fault per lookup, so they may keep up to `lookup_budget` mapped.
    before: maps_of(path) taken just before the mapping was made; the one new
    mapping is ours (none, or several: stay inactive).  mapped_size: the size of
    the owner's mapping now (raising once it is unmapped); /proc/self/maps is read
    only here, at the start: a drop then checks that size, which is ~1000 times
    cheaper than listing the maps, and a first backup drops hundreds of times."""

    def __init__(self, path: str, before: set, mapped_size: Callable[[], int],
                 budget: int = 8 << 20, lookup_budget: int = 8 << 20):
        self.path = path
        self._mapped_size = mapped_size
        self.budget = budget
        self.lookup_budget = lookup_budget
        new = maps_of(path) - before if hasattr(mmap, "MADV_DONTNEED") else set()
        self._map = next(iter(new)) if len(new) == 1 else None
        self._madvise = _madvise() if self._map is not None else None
        self._size = self._current_size() if self._map is not None else None
        self._lock = threading.Lock()
        self._streamed = 0
        self._looked_up = 0
        self._statm = -1
        self._floor = self._read_floor()
        self.drops = 0

    def _read_floor(self) -> int:
        if self._madvise is None:
            return 0
        try:
            self._statm = os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            return _shared_resident(self._statm)
        except (OSError, ValueError, IndexError):
            self._stop()
            return 0

    def streamed(self, n: int = 1) -> None:
        """After reading n pages or so of records or a cursor's entries."""
        if self._madvise is None:
            return
        self._streamed -= n    # races between threads only make a check come early or late
        if self._streamed <= 0:
            self._streamed = self.check(self.budget)

    def looked_up(self) -> None:
        """After one point lookup."""
        if self._madvise is None:
            return
        self._looked_up -= 1
        if self._looked_up <= 0:
            self._looked_up = self.check(self.lookup_budget)

    def check(self, budget: int) -> int:
        """Drop the mapping's pages if the file-backed resident set grew by more than
        budget; return how many calls may come before the next check."""
        with self._lock:
            if self._madvise is None:
                return CHECK_EVERY
            grown = _shared_resident(self._statm) - self._floor
            if grown > budget:
                self.drop()
                # the first calls after a drop fault the B-tree's upper pages in again, each
                # with its neighbours (~0.4 MiB a call, against ~0.1 later, more than the
                # worst case below): look again at the next call
                return 1
            # the worst case for every call: spacing the looks by the growth seen (16 calls
            # near the budget instead of 1) saved ~0.15 CPU-s of a scale-1.0 first backup
            # but let a 1M-file one peak ~1.5 MiB higher (issue 4's ratio; docs/design.md)
            return max(1, min(CHECK_EVERY, (budget - grown) // GROWTH_PER_CALL))

    def _current_size(self) -> Optional[int]:
        try:
            return self._mapped_size()
        except Exception:    # the owner closed it (lmdb.Error): no mapping
            return None

    def drop(self) -> None:
        """madvise(MADV_DONTNEED) over the mapping, if it is still the owner's mapping:
        the environment is open and its map size unchanged (LMDB maps again only
        when the size is changed, which chunkrepo never does: see lmdb_index)."""
        if self._madvise is None or self._size is None or self._current_size() != self._size:
            self._stop()      # unmapped or moved: never touch that address range again
            return
        start, length = self._map
        if self._madvise(start, length, mmap.MADV_DONTNEED) != 0:
            self._stop()
            return
        self.drops += 1
        self._floor = _shared_resident(self._statm)

    def _stop(self) -> None:
        self._madvise = None
        if self._statm != -1:
            os.close(self._statm)
            self._statm = -1

    def close(self) -> None:
        """The mapping is about to go: stop."""
        with self._lock:
            self._stop()
