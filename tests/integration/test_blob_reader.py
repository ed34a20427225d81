"""BlobReader (restore's reads into reused buffers) against read_blobs, on real packs."""

import os
import random

import pytest

from chunkrepo.codec import compression
from chunkrepo.errors import IntegrityError, StorageError
from chunkrepo.ops.traverse import walk
from chunkrepo.repository import Repository
from chunkrepo.repository.packs import pack_name
from chunkrepo.storage.faults import FaultyStorage
from tests.conftest import sha256_tree, write_random


def _mixed_tree(src, n=120, seed=7):
    """Small files, half compressible (zstd blobs) and half random (raw blobs), and a
    few of several chunks."""
    rnd = random.Random(seed)
    os.makedirs(src)
    for i in range(n):
        size = rnd.choice((0, 1, 100, 3000, 20_000, 150_000))
        p = os.path.join(src, f"f{i:03}")
        if i % 2:
            write_random(p, size, seed=i)
        else:
            with open(p, "wb") as f:
                f.write((b"compressible %d " % i) * (size // 16) + b"x" * (size % 16))
    write_random(os.path.join(src, "big"), 5 << 20, seed=99)


def _items(r: Repository, bid: str):
    """[(chunk id, entry)] of every file of the backup, in tar order."""
    items = []
    with r.index.read() as v:
        for _, node, _ in walk(r, bytes.fromhex(r.resolve_backup(bid).root), "/"):
            if node.chunks:
                items += [(cid, v.chunk(cid)) for cid in node.chunk_ids()]
    return items


def _read(reader, items) -> list:
    """What read_blobs returns, through reader: fetch, then decode each blob."""
    reader.fetch(items)
    out = []
    for k in range(len(items)):
        try:
            out.append(reader.decode(k))
        except (IntegrityError, StorageError) as e:
            out.append(e)
    return out


@pytest.fixture
def mixed(repo, tmp_path):
    src = tmp_path / "src"
    _mixed_tree(str(src))
    bid = repo.backup([src]).id
    return repo.repository, bid


def test_reads_what_read_blobs_reads_reusing_its_buffers(mixed):
    r, bid = mixed
    items = _items(r, bid)
    kinds = {bytes(r.storage.get(pack_name(e.pack), e.offset, 1)) for _, e in items}
    assert kinds == {b"\x00", b"\x01"}      # raw and zstd blobs both
    reader = r.blob_reader()
    buffers = set()
    for lo in range(0, len(items), 17):     # calls of several ranged reads, in and across packs
        part = items[lo:lo + 17]
        got = _read(reader, part)
        assert [bytes(g) for g in got] == r.read_blobs(part)
        buffers.update(id(g.obj) for g in got)
    # two buffers (packed bytes, decoded frames), grown a few times: not one object per blob
    assert len(buffers) <= 8 < len(items)


def test_read_through_a_storage_without_readinto(mixed):
    r0, bid = mixed
    items = _items(r0, bid)
    with Repository(r0.path, wrap_storage=lambda s: FaultyStorage(s, [])) as r:
        got = _read(r.blob_reader(), items)
        assert [bytes(g) for g in got] == r0.read_blobs(items)


def test_errors_are_per_blob(mixed):
    r, bid = mixed
    items = _items(r, bid)[:30]
    k = next(i for i, (_, e) in enumerate(items) if e.length > 100)
    cid, e = items[k]
    path = os.path.join(r.path, pack_name(e.pack))
    with open(path, "r+b") as f:
        f.seek(e.offset + e.length - 3)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x55]))
    r.storage.close()
    items[3] = (items[3][0], None)           # a chunk the index lacks
    got = _read(r.blob_reader(), items)
    want = r.read_blobs(items)
    for i, (g, w) in enumerate(zip(got, want)):
        if i in (3, k):
            assert isinstance(g, IntegrityError) and type(g) is type(w)
        else:
            assert bytes(g) == w
    # a pack cut short fails the blobs of the reads that reach past its end
    os.truncate(path, e.offset + 1)
    r.storage.close()
    got = _read(r.blob_reader(), items)
    assert isinstance(got[k], StorageError)
    assert all(isinstance(g, (StorageError, IntegrityError)) or bytes(g) == w for g, w in zip(got, want))


def test_decompress_view():
    out = bytearray(10_000)
    data = b"abc" * 2000
    hdr, z = compression.compress_parts(data)
    assert hdr == b"\x01"
    v = compression.decompress_view(hdr + z, len(data), out)
    assert v.obj is out and bytes(v) == data
    raw = os.urandom(500)
    blob = b"".join(compression.compress_parts(raw))
    v = compression.decompress_view(blob, len(raw), out)
    assert v.obj is blob and bytes(v) == raw       # a view of the blob: not copied
    for bad, size in ((hdr + z, len(data) + 1), (blob, 499), (b"", 0), (b"\x07abc", 3),
                      (hdr + z[:len(z) // 2], len(data)), (hdr + b"\x00" * 20, len(data))):
        with pytest.raises(IntegrityError):
            compression.decompress_view(bad, size, out)


def test_restore_of_many_small_files_across_runs(mixed, repo, tmp_path):
    """Runs of a worker's batch reuse the buffers: every file comes back intact."""
    r, bid = mixed
    res = repo.restore(bid, tmp_path / "out", str(tmp_path / "src"))
    assert not res.errors
    got = {os.path.relpath(p, tmp_path / "out" / "src"): d for p, d in sha256_tree(tmp_path / "out").items()}
    want = {os.path.relpath(p, tmp_path / "src"): d for p, d in sha256_tree(tmp_path / "src").items()}
    assert got == want and len(got) == 121


def test_decode_into_the_callers_buffer(mixed):
    """A zstd blob is decoded into the buffer given (restore's O_DIRECT buffer), a raw one
    is returned as it was read."""
    r, bid = mixed
    items = _items(r, bid)[:40]
    want = r.read_blobs(items)
    reader = r.blob_reader()
    reader.fetch(items)
    seen = set()
    for k, (_, e) in enumerate(items):
        out = bytearray(e.raw_length + 10)
        got = reader.decode(k, memoryview(out)[5:])
        assert bytes(got) == want[k]
        zstd = bytes(r.storage.get(pack_name(e.pack), e.offset, 1)) == b"\x01"
        assert (got.obj is out) == zstd
        if zstd:
            assert out[5:5 + e.raw_length] == want[k] and out[:5] == bytes(5)
        seen.add(zstd)
    assert seen == {True, False}
