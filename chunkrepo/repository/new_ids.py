"""Which blob ids a write session has indexed, when it began on an index without blobs.

A first backup into an empty repository claims every chunk it reads, and each
claim asked the index whether the chunk is stored: a B-tree walk through the
LMDB map for an id that is never there.  At scale 1.0 those lookups were
~60k of a first backup's ~125k page faults (the writer keeps little of the
map resident: index/resident.py), with their lock, transaction and
resident-set bookkeeping.

NewIds is a Bloom filter of the ids (chunks and directory records) the session
has committed to the index.  When the session began on an index with no blob,
an id the filter does not hold is not in the index (a Bloom filter has no false
negatives), so its claim needs no lookup; an id it may hold is looked up as
before.  BLAKE3 ids are uniformly distributed, so the bit positions are read
from the id's own bytes.

The filter has a fixed size (SIZE: 1 MiB): the same memory for ten thousand
files as for millions.  False positives, which only cost the lookup the filter
was there to save, stay under 0.1% up to ~300k ids (0.03% measured at 200k)
and reach ~3% at a million.
"""

SIZE = 1 << 20              # bytes of bits
_BITS = SIZE * 8            # a power of two: a position is the id's bits under a mask
_SHIFT = _BITS.bit_length() - 1
_MASK = _BITS - 1
_PROBES = 3                 # positions per id: _PROBES * _SHIFT bits of the id are used
_ID_BYTES = (_PROBES * _SHIFT + 7) // 8


class NewIds:
    """A Bloom filter of 32-byte ids: add() them, `in` answers 'maybe' or 'surely not'."""

    __slots__ = ("_bits",)

    def __init__(self):
        self._bits = bytearray(SIZE)

    def add(self, ids) -> None:
        bits = self._bits
        for cid in ids:
            x = int.from_bytes(cid[:_ID_BYTES], "little")
            for _ in range(_PROBES):
                p = x & _MASK
                bits[p >> 3] |= 1 << (p & 7)
                x >>= _SHIFT

    def __contains__(self, cid: bytes) -> bool:
        bits = self._bits
        x = int.from_bytes(cid[:_ID_BYTES], "little")
        for _ in range(_PROBES):
            p = x & _MASK
            if not bits[p >> 3] >> (p & 7) & 1:
                return False
            x >>= _SHIFT
        return True
