"""repository.packs: the entries a damaged trailer still yields (trailer_candidates)."""

import os
import random

from chunkrepo.codec import compression
from chunkrepo.codec.hashing import hash_bytes
from chunkrepo.repository.packs import KIND_DATA, KIND_TREE, PackWriter, pack_name, trailer_candidates
from chunkrepo.storage import LocalStorage


def _pack(tmp_path, n=300):
    storage = LocalStorage(str(tmp_path))
    os.makedirs(tmp_path / "packs", exist_ok=True)
    w = PackWriter(storage)
    rnd = random.Random(7)
    for i in range(n):
        # ids chosen to hold the pattern of an entry's start, and offsets of every msgpack width
        raw = rnd.randbytes(rnd.choice((10, 200, 70_000)))
        bid = hash_bytes(raw) if i % 7 else b"\x95\x00\xc4\x20" * 8
        w.add(KIND_TREE if i % 5 == 0 else KIND_DATA, bid, compression.compress(raw), len(raw))
    entries = w.seal()
    return storage, pack_name(w.pack_id), entries


def test_an_intact_trailer_yields_every_entry(tmp_path):
    """Every entry, even after an id that holds the pattern (false candidates are dropped
    by the caller's verification: their bytes do not hash to their id)."""
    storage, name, entries = _pack(tmp_path)
    assert set(entries) <= set(trailer_candidates(storage, name))


def test_damage_costs_only_the_entries_it_hits(tmp_path):
    storage, name, entries = _pack(tmp_path)
    path = os.path.join(str(tmp_path), name)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:          # the footer's magic, its trailer offset, and one entry
        for at in (size - 1, size - 36, size - 36 - 500):
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ 0xFF]))
    got = set(trailer_candidates(storage, name))
    assert len(set(entries) - got) <= 1
