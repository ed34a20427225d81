"""Node: one entry of a directory record; Tree: a decoded directory record."""

import stat
from typing import NamedTuple, Optional

from ..codec import records
from ..codec.hashing import ID_SIZE, hash_bytes

_BASE_FIELDS = 18   # entries without an etag are stored with these fields only

# kind letters, as tar type flags read them
REG, DIR, SYMLINK, CHR, BLK, FIFO, SOCK = "f", "d", "l", "c", "b", "p", "s"
_KINDS = {stat.S_IFREG: REG, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK,
          stat.S_IFCHR: CHR, stat.S_IFBLK: BLK, stat.S_IFIFO: FIFO, stat.S_IFSOCK: SOCK}


def kind_of(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "?")


class Node(NamedTuple):
    """One directory entry with full metadata.  Field order is the stored order."""

    name: bytes
    mode: int               # full st_mode, type bits included
    uid: int
    gid: int
    user: str               # '' when the uid has no name
    group: str
    size: int               # apparent size for regular files, else 0
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    nlink: int
    rdev: int               # device number of character/block devices
    target: bytes           # symlink target
    xattrs: Optional[list]  # [[name bytes, value bytes], ...] or None
    chunks: bytes           # concatenated 32-byte chunk ids of the content
    subtree: Optional[bytes]  # directory record id of a directory
    sparse: Optional[list]  # [[offset, length], ...] data extents of a sparse file
    etag: Optional[str] = None  # an object store's opaque version token (URL backups only)

    @property
    def kind(self) -> str:
        return kind_of(self.mode)

    def chunk_ids(self):
        c = self.chunks
        return [c[i:i + ID_SIZE] for i in range(0, len(c), ID_SIZE)]


def node_from_stat(name: bytes, st, user: str, group: str, **kw) -> Node:
    """A Node from an lstat result; content fields come from kw."""
    is_reg = stat.S_ISREG(st.st_mode)
    return Node(name, st.st_mode, st.st_uid, st.st_gid, user, group,
                st.st_size if is_reg else 0, st.st_mtime_ns, st.st_ctime_ns,
                st.st_ino, st.st_dev, st.st_nlink,
                st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0,
                kw.get("target", b""), kw.get("xattrs"), kw.get("chunks", b""),
                kw.get("subtree"), kw.get("sparse"))


class Tree:
    """A decoded directory record: its entries sorted by name."""

    __slots__ = ("entries",)

    def __init__(self, entries):
        self.entries = entries

    @classmethod
    def decode(cls, data) -> "Tree":
        make, entries = Node._make, records.decode_tree(data)
        for e in entries:
            if len(e) == _BASE_FIELDS:
                e.append(None)
        return cls([make(e) for e in entries])

    def encode(self) -> bytes:
        # the optional trailing etag is left out when absent: records without
        # one keep the bytes (and so the ids) they had before it existed
        return records.encode_tree([n if n.etag is not None else n[:_BASE_FIELDS]
                                    for n in self.entries])

    def by_name(self) -> dict:
        return {n.name: n for n in self.entries}

    @staticmethod
    def id_of(data: bytes) -> bytes:
        return hash_bytes(data)
