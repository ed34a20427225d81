"""Pack files: many blobs written once, with a trailer that lists them.

Layout (docs/format.md):
  b"CRPACK01"                      8-byte header
  blob, blob, ...                  compressed blobs (codec.compression format)
  trailer                          msgpack [[kind, id, offset, length, raw_length], ...]
  footer (36 bytes)                <Q trailer offset, <I trailer length,
                                   16 bytes BLAKE3 of the trailer, b"CRPKEND1"
"""

import os
import re
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
# a damaged trailer is searched for its entries in this many bytes at the pack's end when
# the footer does not say where it starts (2,048 entries of at most ~56 bytes each)
_SCAN_TAIL = 256 << 10
# the start of a trailer entry: a msgpack array of 5, kind 0 or 1, a 32-byte bin (the id)
# (a lookahead: a false match inside one entry must not hide the next entry's start)
_ENTRY_START = re.compile(rb"(?=\x95[\x00\x01]\xc4\x20)", re.DOTALL)
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


def trailer_candidates(storage, name: str) -> List[PackEntry]:
    """The entries a damaged trailer may still hold, found by searching its bytes for
    the start of each entry (so damage to one entry, or to the footer, costs only that
    entry).  NOT verified: a blob may be adopted only once its bytes hash to its id."""
    size = storage.size(name)
    start = max(len(HEADER), size - _SCAN_TAIL)
    if size >= len(HEADER) + FOOTER_SIZE:
        toff = _FOOTER.unpack(storage.get(name, size - FOOTER_SIZE, FOOTER_SIZE))[0]
        if len(HEADER) <= toff <= size - FOOTER_SIZE:
            start = toff        # the footer's trailer offset, if it is plausible
    tail = storage.get(name, start, size - start)
    out = []
    for m in _ENTRY_START.finditer(tail):
        at = m.start() + 36      # array, kind, bin header (4 bytes), id (32)
        ints = []
        for _ in range(3):
            got = _uint(tail, at)
            if got is None:
                break
            value, at = got
            ints.append(value)
        if len(ints) == 3 and len(HEADER) <= ints[0] and ints[1] > 0 and ints[0] + ints[1] <= size:
            out.append(PackEntry(tail[m.start() + 1], bytes(tail[m.start() + 4:m.start() + 36]), *ints))
    return out


_UINTS = {0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8}


def _uint(buf: bytes, at: int):
    """(value, next offset) of the msgpack unsigned integer at buf[at], or None."""
    if at >= len(buf):
        return None
    b = buf[at]
    if b < 0x80:
        return b, at + 1
    n = _UINTS.get(b)
    if n is None or at + 1 + n > len(buf):
        return None
    return int.from_bytes(buf[at + 1:at + 1 + n], "big"), at + 1 + n
