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

A manifest comes from the repository, which may be shared or damaged: before anything is
placed, unsafe_path() must find nothing (restores raise UnsafePath otherwise).
"""

from typing import Iterable, List, NamedTuple, Optional, Tuple

import msgpack

from ...codec.hashing import hash_bytes

MAGIC = "chunkrepo-dir-manifest"
VERSION = 1
DIR, FILE, LINK = "d", "f", "l"
_ROW_TYPES = [bytes, str, int, int, bytes]


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
    out = []
    for r in rows:
        if not (isinstance(r, list) and len(r) == 5 and [type(x) for x in r] == _ROW_TYPES):
            raise ValueError(f"a directory manifest with a malformed entry {r!r:.80}")
        out.append(MEntry(*r))
    return out


def digest_of(data: bytes) -> str:
    return hash_bytes(data).hex()


def unsafe_path(entries: Iterable[Tuple[bytes, str]]) -> Optional[str]:
    """Why (path, type) pairs cannot be placed below a directory safely, or None.

    Every path must be relative, its components neither empty nor '.' or '..', with no NUL;
    listed once; and every parent a listed directory, so nothing is ever placed through a
    symlink (or file) the same restore made.  The same rules as a backup restore's names."""
    kinds = {}
    for path, type_ in entries:
        if not isinstance(path, bytes) or b"\0" in path:
            return f"{path!r}: not a path"
        if path.startswith(b"/"):
            return f"{path!r}: an absolute path"
        if any(c in (b"", b".", b"..") for c in path.split(b"/")):
            return f"{path!r}: an empty, '.' or '..' component"
        if type_ not in (DIR, FILE, LINK):
            return f"{path!r}: unknown type {type_!r}"
        if path in kinds:
            return f"{path!r}: listed twice"
        kinds[path] = type_
    for path in kinds:
        parent = path.rpartition(b"/")[0]
        if parent and kinds.get(parent) != DIR:
            what = "not listed" if parent not in kinds else "not a directory"
            return f"{path!r}: below {parent!r}, which is {what}"
    return None
