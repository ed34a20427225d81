"""Pack files: many blobs written once, with a trailer that lists them.

Layout (docs/format.md):
  b"CRPACK01"                      8-byte header
  blob, blob, ...                  compressed blobs (codec.compression format)
  trailer                          msgpack [[kind, id, offset, length, raw_length], ...]
  footer (36 bytes)                <Q trailer offset, <I trailer length,
                                   16 bytes BLAKE3 of the trailer, b"CRPKEND1"
"""

import os
import struct
from typing import List, NamedTuple

from ..codec import records
from ..codec.hashing import hash_bytes
from ..errors import IntegrityError

HEADER = b"CRPACK01"
FOOTER_MAGIC = b"CRPKEND1"
_FOOTER = struct.Struct("<QI16s8s")
FOOTER_SIZE = _FOOTER.size

KIND_DATA = 0
KIND_TREE = 1
# a blob's header byte and payload are joined into one write below this size (the
# copy costs less than a second pass through the storage writer's layers)
_JOIN_BELOW = 64 << 10


def pack_name(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"packs/{h[:2]}/{h}"


def pack_id_from_name(name: str) -> bytes:
    return bytes.fromhex(name.rsplit("/", 1)[1])


class PackEntry(NamedTuple):
    kind: int
    id: bytes
    offset: int
    length: int
    raw_length: int


class PackWriter:
    """Appends blobs to one new pack; seal() makes it durable and returns its entries."""

    def __init__(self, storage):
        self.pack_id = os.urandom(16)
        self._w = storage.create(pack_name(self.pack_id))
        self._w.write(HEADER)
        self._offset = len(HEADER)
        self.entries: List[PackEntry] = []
        self.record_bytes = 0        # raw bytes of the directory records it holds

    @property
    def size(self) -> int:
        return self._offset

    def add(self, kind: int, blob_id: bytes, blob: bytes, raw_length: int) -> None:
        self.add_parts(kind, blob_id, (blob,), raw_length)

    def add_parts(self, kind: int, blob_id: bytes, parts, raw_length: int) -> int:
        """Append one blob given in pieces (compression.compress_parts); returns its length."""
        if len(parts) == 2 and len(parts[1]) < _JOIN_BELOW:
            blob = parts[0] + parts[1]       # one write instead of two (most blobs are small)
            self._w.write(blob)
            n = len(blob)
        else:
            n = 0
            for part in parts:
                self._w.write(part)
                n += len(part)
        self.entries.append(PackEntry(kind, blob_id, self._offset, n, raw_length))
        if kind == KIND_TREE:
            self.record_bytes += raw_length
        self._offset += n
        return n

    def seal(self) -> List[PackEntry]:
        trailer = records.pack_msgpack([list(e) for e in self.entries])
        self._w.write(trailer)
        self._w.write(_FOOTER.pack(self._offset, len(trailer), hash_bytes(trailer)[:16], FOOTER_MAGIC))
        self._w.commit()
        self._offset += len(trailer) + FOOTER_SIZE
        return self.entries

    def abort(self) -> None:
        self._w.abort()


def read_trailer(storage, name: str) -> List[PackEntry]:
    """Read and verify a pack's trailer: the list of its blobs."""
    size = storage.size(name)
    if size < len(HEADER) + FOOTER_SIZE:
        raise IntegrityError(f"pack {name} is truncated ({size} bytes)")
    toff, tlen, thash, magic = _FOOTER.unpack(storage.get(name, size - FOOTER_SIZE, FOOTER_SIZE))
    if magic != FOOTER_MAGIC or toff + tlen + FOOTER_SIZE != size:
        raise IntegrityError(f"pack {name} has a damaged footer")
    trailer = storage.get(name, toff, tlen)
    if hash_bytes(trailer)[:16] != thash:
        raise IntegrityError(f"pack {name} has a damaged trailer")
    return [PackEntry(*e) for e in records.unpack_msgpack(trailer)]
