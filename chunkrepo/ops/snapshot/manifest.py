"""The canonical manifest of a directory snapshot; its BLAKE3 is the directory's digest.

msgpack ["chunkrepo-dir-manifest", 1, [entry, ...]], an entry being
    [path, type, mode, size, ref]
    path  bytes, relative to the snapshotted directory, '/'-separated (the directory itself is not listed)
    type  "d" directory, "f" regular file, "l" symlink
    mode  permission bits (st_mode & 0o7777); 0 for symlinks
    size  a file's length in bytes, else 0
    ref   a file's 32-byte BLAKE3 content digest, a symlink's target, b"" for a directory
sorted by the path's components (bytewise), so every walk of the same content encodes equal
bytes.  Names, types, modes, sizes and contents are covered: renaming, chmod, adding an empty
directory or editing a byte changes the digest; owners, times and the directory's own name and
location do not.
"""

from typing import List, NamedTuple

import msgpack

from ...codec.hashing import hash_bytes

MAGIC = "chunkrepo-dir-manifest"
VERSION = 1
DIR, FILE, LINK = "d", "f", "l"


class MEntry(NamedTuple):
    path: bytes
    type: str
    mode: int
    size: int
    ref: bytes

    @property
    def digest(self) -> str:
        return self.ref.hex() if self.type == FILE else ""


def _key(e) -> list:
    return e[0].split(b"/")


def encode(entries) -> bytes:
    rows = sorted(([bytes(e[0]), e[1], int(e[2]), int(e[3]), bytes(e[4])] for e in entries), key=_key)
    return msgpack.packb([MAGIC, VERSION, rows], use_bin_type=True)


def decode(data: bytes) -> List[MEntry]:
    try:
        magic, version, rows = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise ValueError(f"not a directory manifest: {e}") from None
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not a version {VERSION} directory manifest")
    return [MEntry(*r) for r in rows]


def digest_of(data: bytes) -> str:
    return hash_bytes(data).hex()
