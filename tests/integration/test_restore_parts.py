"""Restore writes a big file in parts, each by whichever worker is free (ops/restore.py,
_Split): the same bytes, sizes, modes and times as a file written whole, with O_DIRECT on
and off; a part that fails removes the file and is reported once; a hard link to such a
file is made once all its parts are written; a full disk stops the restore and leaves no
partial file.  _PART_BYTES is lowered to 1 MiB so that files of a few MiB (chunks of
~1 MiB) are cut into parts."""

import os
import random
import stat

import pytest

from chunkrepo.direct_io import ENV
from chunkrepo.errors import StorageError
from chunkrepo.ops import restore
from chunkrepo.ops.traverse import find_node
from chunkrepo.repository.packs import pack_name
from tests.conftest import small_tmpfs, write_random

MiB = 1 << 20
T0 = 1_600_000_000_123_456_789


@pytest.fixture
def parts(monkeypatch):
    """Parts of 1 MiB; returns {file name: [part index written]}, filled as parts are written."""
    monkeypatch.setattr(restore, "_PART_BYTES", MiB)
    written: dict = {}
    write_part = restore._Restorer.write_part

    def recorded(self, split, k, reader, counts):
        written.setdefault(split.job.name.decode(), []).append(k)
        return write_part(self, split, k, reader, counts)

    monkeypatch.setattr(restore._Restorer, "write_part", recorded)
    return written


def _text(n: int, seed: int) -> bytes:
    """Compressible: its chunks are zstd frames, decoded straight into the O_DIRECT buffer."""
    rnd = random.Random(seed)
    words = [rnd.randbytes(4).hex().encode() for _ in range(3000)]
    return b" ".join(rnd.choices(words, k=n // 9 + 1))[:n]


@pytest.fixture
def src(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_random(src / "big", 9 * MiB + 4097, seed=1)
    (src / "text").write_bytes(_text(8 * MiB + 3, seed=2))
    write_random(src / "ro", 5 * MiB + 1, seed=3)
    os.chmod(src / "ro", 0o444)             # each part opens it for writing again
    write_random(src / "small", 1000, seed=4)
    with open(src / "sparse", "wb") as f:   # holes: written whole
        for at in (1, 5):
            f.seek(at * MiB + 7)
            f.write(random.Random(at).randbytes(MiB))
        f.truncate(9 * MiB)
    for name in os.listdir(src):
        os.utime(src / name, ns=(T0, T0 + len(name)))
    return src


def _same(src, got):
    assert sorted(os.listdir(got)) == sorted(os.listdir(src))
    for name in os.listdir(src):
        a, b = os.stat(src / name), os.stat(got / name)
        assert (b.st_size, b.st_mode, b.st_mtime_ns) == (a.st_size, a.st_mode, a.st_mtime_ns), name
        assert (got / name).read_bytes() == (src / name).read_bytes(), name


@pytest.mark.parametrize("direct", ["1", "0"])
def test_big_files_written_in_parts_are_the_same_files(repo, src, tmp_path, parts, monkeypatch, direct):
    monkeypatch.setenv(ENV, direct)
    bid = repo.backup([src]).id
    res = repo.restore(bid, tmp_path / "out", str(src))
    assert res.errors == [] and res.files == 5
    _same(src, tmp_path / "out" / "src")
    assert set(parts) == {"big", "text", "ro"}          # not the small or the sparse file
    for name, ks in parts.items():
        assert sorted(ks) == list(range(len(ks))) and len(ks) >= 2, name     # each part once


def test_a_corrupt_chunk_in_one_part_removes_the_file_and_is_reported_once(repo, src, tmp_path, parts):
    bid = repo.backup([src]).id
    r = repo.repository
    node = find_node(r, bytes.fromhex(r.resolve_backup(bid).root), str(src / "big"))
    cid = node.chunk_ids()[len(node.chunk_ids()) // 2]
    with r.index.read() as v:
        e = v.chunk(cid)
    with open(os.path.join(r.path, pack_name(e.pack)), "r+b") as f:
        f.seek(e.offset + e.length // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    r.storage.close()   # drop cached descriptors (the file itself was edited in place)
    res = repo.restore(bid, tmp_path / "out", str(src))
    assert len(res.errors) == 1 and str(src / "big") in res.errors[0], res.errors
    assert "removed" in res.errors[0]
    got = tmp_path / "out" / "src"
    assert not (got / "big").exists()                  # never left half written
    assert res.files == 4 and res.skipped == 1
    for name in ("text", "ro", "small", "sparse"):
        assert (got / name).read_bytes() == (src / name).read_bytes()


def test_a_hard_link_to_a_file_written_in_parts_is_made_once_it_is_complete(repo, src, tmp_path, parts):
    os.link(src / "big", src / "zlink")
    bid = repo.backup([src]).id
    res = repo.restore(bid, tmp_path / "out", str(src))
    assert res.errors == [] and res.links == 1
    got = tmp_path / "out" / "src"
    assert os.stat(got / "zlink").st_ino == os.stat(got / "big").st_ino
    assert (got / "zlink").read_bytes() == (src / "big").read_bytes()
    assert stat.S_IMODE(os.stat(got / "big").st_mode) == stat.S_IMODE(os.stat(src / "big").st_mode)


def test_a_full_disk_during_parts_stops_the_restore_and_leaves_no_partial_file(repo, tmp_path, parts):
    src = tmp_path / "src"
    src.mkdir()
    write_random(src / "big", 9 * MiB, seed=5)
    bid = repo.backup([src]).id
    with small_tmpfs(tmp_path / "mnt", "4m") as mnt:
        with pytest.raises(StorageError) as exc:
            repo.restore(bid, mnt / "out", str(src / "big"))
        assert "No space left on device" in str(exc.value) and "\n" not in str(exc.value)
        assert os.listdir(mnt / "out") == []
    assert parts["big"]
