"""What a file reader asks of a write session (claims, compression, packs), inside a
reader process of that session (ops/backup/reader_procs).

A chunk is claimed in the session's SharedClaims first, then looked up in the index in a
read snapshot taken after the claim: the session releases a claim only once the chunk's
pack is committed, so a chunk stored by anyone is either still claimed or in that
snapshot.  Claimed chunks are compressed here and appended to this process's own pack; a
sealed pack's entries go back to the session (send), which indexes it at its next
checkpoint as one of its own (WriteSession.adopt_sealed).
"""

from typing import Callable, List, Optional

from ..codec import compression
from ..index import Index
from .packs import KIND_DATA, PackWriter
from .session import MAX_PACK_BLOBS, level_for
from .shared_claims import SharedClaims


class ReaderSession:
    def __init__(self, storage, claims: SharedClaims, index_path: str, send: Callable,
                 levels: tuple, pack_size: int):
        """index_path: the repository's index (what a released claim is in).
        levels: WriteSession.levels."""
        self.storage = storage
        self.claims = claims
        self.index = Index(index_path, readonly=True, lock=True)
        self.send = send
        self.levels = levels
        self.pack_size = pack_size
        self.writer: Optional[PackWriter] = None
        self.bytes_new = self.bytes_stored = 0

    def claim_chunks(self, cids: List[bytes]) -> List[bool]:
        new = self.claims.claim(cids)
        if not any(new):
            return new
        with self.index.read() as v:
            out = [n and not v.has_chunk(cid) for cid, n in zip(cids, new)]
        held = [cid for cid, n, o in zip(cids, new, out) if n and not o]
        self.claims.release(held)       # in the index already: nothing to hold
        return out

    def claim_chunk(self, cid: bytes) -> bool:
        return self.claim_chunks([cid])[0]

    def compress_chunk(self, data) -> tuple:
        return compression.compress_parts(data, level_for(self.levels, len(data)))

    def store_chunk(self, cid: bytes, data) -> None:
        self.append_chunk(cid, self.compress_chunk(data), len(data))

    def store_new(self, pairs: list) -> None:
        """Claim and store [(id, content)] (small files read together) with one claim."""
        for (cid, data), new in zip(pairs, self.claim_chunks([cid for cid, _ in pairs])):
            if new:
                self.store_chunk(cid, data)

    def append_chunk(self, cid: bytes, parts: tuple, raw_length: int) -> None:
        w = self.writer
        if w is None:
            w = self.writer = PackWriter(self.storage)
        self.bytes_stored += w.add_parts(KIND_DATA, cid, parts, raw_length)
        self.bytes_new += raw_length
        if w.size >= self.pack_size or len(w.entries) >= MAX_PACK_BLOBS:
            self.seal()

    def seal(self) -> None:
        """Make the open pack durable and send its entries (and the bytes counted since)."""
        w, self.writer = self.writer, None
        if w is None:
            return
        try:
            entries = w.seal()
        except BaseException:
            w.abort()
            raise
        self.send(("sealed", w.pack_id, entries, w.size, self.bytes_new, self.bytes_stored))
        self.bytes_new = self.bytes_stored = 0

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
