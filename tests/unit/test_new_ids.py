"""NewIds: the Bloom filter of the chunk ids a write session indexed."""

import os

from chunkrepo.codec.hashing import hash_bytes
from chunkrepo.repository.new_ids import NewIds


def test_every_added_id_is_held():
    f = NewIds()
    ids = [hash_bytes(b"%d" % i) for i in range(50_000)]
    f.add(ids[:25_000])
    f.add(iter(ids[25_000:]))          # any iterable
    assert all(cid in f for cid in ids)


def test_ids_never_added_are_mostly_not_held():
    f = NewIds()
    f.add(hash_bytes(b"in %d" % i) for i in range(100_000))
    others = [hash_bytes(b"out %d" % i) for i in range(100_000)]
    false_positives = sum(cid in f for cid in others)
    assert false_positives < 100           # ~0.01% expected at 100k ids in 1 MiB


def test_empty_filter_holds_nothing():
    f = NewIds()
    assert not any(os.urandom(32) in f for _ in range(1000))
