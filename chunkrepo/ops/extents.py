"""Where a file with holes keeps its data (SEEK_DATA / SEEK_HOLE): the backup reads only
that, the snapshot cache copies only that."""

import os


def data_extents(fd: int, size: int):
    """[[offset, length], ...] of the data regions of a file with holes."""
    extents = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:   # ENXIO: only a hole remains
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        extents.append([start, min(end, size) - start])
        pos = end
    return extents
