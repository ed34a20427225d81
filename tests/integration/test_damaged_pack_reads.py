"""Reading a backup whose pack is damaged (before check --repair): restore, tar and the
prefetch stream fail exactly the files that reference a damaged blob.

Neighbouring blobs are read with one ranged read; when it fails (the pack was cut
short inside it), its blobs are read one at a time, so the intact ones are used.
"""

import os
import random
import subprocess
import tarfile

import pytest
from click.testing import CliRunner

from chunkrepo import Repo
from chunkrepo.cli.main import cli
from chunkrepo.errors import ChunkrepoError
from chunkrepo.model.nodes import REG
from chunkrepo.ops.prefetch import prefetch
from chunkrepo.ops.traverse import walk
from chunkrepo.repository.packs import pack_name
from chunkrepo.storage.faults import Fault, FaultyStorage
from chunkrepo.storage.retry import RetryingStorage
from tests.conftest import write_random


def _small_files(src, names, seed):
    """Files of 1-6 KB, half random (stored raw), half compressible (zstd frames)."""
    rnd = random.Random(seed)
    os.makedirs(src, exist_ok=True)
    for i, name in enumerate(names):
        p = os.path.join(src, name)
        size = rnd.randrange(1000, 6000)
        if i % 2:
            write_random(p, size, seed=seed * 1000 + i)
        else:
            with open(p, "wb") as f:
                f.write((b"line %d of %s\n" % (i, name.encode())) * (size // 20))


def _files(repo, bid) -> dict:
    """{path in the backup ('/...'): [its chunks' index entries]} of the regular files, in tar order."""
    r = repo.repository
    out = {}
    with r.index.read() as v:
        for path, node, _ in walk(r, bytes.fromhex(r.resolve_backup(bid).root), "/"):
            if node.kind == REG and node.chunks:
                out["/" + os.fsdecode(path)] = [v.chunk(cid) for cid in node.chunk_ids()]
    return out


def _damaged(files: dict, bad) -> list:
    """The files (tar order) with a chunk for which bad(entry) holds."""
    return [p for p, entries in files.items() if any(bad(e) for e in entries)]


def _reread(repo) -> None:
    repo.repository.storage.close()     # drop cached descriptors of the pack we changed


def _flip_blob(repo, e) -> None:
    """Flip one byte in the middle of the stored blob of index entry e."""
    with open(os.path.join(repo.repository.path, pack_name(e.pack)), "r+b") as f:
        f.seek(e.offset + e.length // 2)
        b = f.read(1)
        f.seek(e.offset + e.length // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    _reread(repo)


def _tar_and_extract(repo, bid, src, tmp_path):
    """`chunkrepo tar` of src (it must exit 1: damage) and GNU tar's extraction of the
    archive; (the CLI's result, the directory extracted into)."""
    out = tmp_path / "x.tar"
    result = CliRunner().invoke(cli, ["tar", "--repo", str(repo.path), bid, str(src), "-o", str(out)])
    assert result.exit_code == 1, result.stderr
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(["tar", "xf", str(out), "-C", str(x)], check=True)
    return result, x


def _error_paths(errors) -> list:
    """The path each restore error names ('PATH: message')."""
    return [line.split(": ", 1)[0] for line in errors]


def _assert_restored(src_root, out_root, files: dict, damaged: list) -> None:
    """Every file not in damaged is byte-identical to its source; the damaged ones are absent."""
    for path in files:
        got = os.path.join(out_root, os.path.relpath(path, src_root))
        if path in damaged:
            assert not os.path.lexists(got), path
        else:
            with open(got, "rb") as g, open(path, "rb") as w:
                assert g.read() == w.read(), path


@pytest.fixture
def one_pack(repo, tmp_path):
    """A backup of 60 small files in two directories, all in one pack."""
    src = tmp_path / "src"
    _small_files(src / "a", [f"f{i:02}" for i in range(40)], seed=1)
    _small_files(src / "b", [f"g{i:02}" for i in range(20)], seed=2)
    bid = repo.backup([src]).id
    files = _files(repo, bid)
    packs = {e.pack for entries in files.values() for e in entries}
    assert len(files) == 60 and len(packs) == 1
    pack = packs.pop()
    return bid, str(src), files, pack, os.path.join(repo.repository.path, pack_name(pack))


def _cut_inside(files: dict, at_boundary: bool) -> int:
    """An offset to cut the pack at: inside (or at the start of) the blob in the middle of
    the pack, so the blobs before it are intact neighbours of damaged ones."""
    blobs = sorted({(e.offset, e.length) for entries in files.values() for e in entries})
    offset, length = blobs[len(blobs) // 2]
    assert blobs[len(blobs) // 2 - 1][0] + blobs[len(blobs) // 2 - 1][1] == offset   # a neighbour
    return offset if at_boundary else offset + length // 2


@pytest.mark.parametrize("at_boundary", [False, True], ids=["mid-blob", "blob-boundary"])
def test_restore_of_a_truncated_pack_fails_only_the_files_past_the_cut(repo, tmp_path, one_pack, at_boundary):
    bid, src, files, pack, path = one_pack
    cut = _cut_inside(files, at_boundary)
    os.truncate(path, cut)
    _reread(repo)
    damaged = _damaged(files, lambda e: e.offset + e.length > cut)
    assert 0 < len(damaged) < len(files) - 20
    res = repo.restore(bid, tmp_path / "out", src)
    assert sorted(_error_paths(res.errors)) == sorted(damaged)     # one error per file, no more
    assert all(line.endswith("the file was not restored") and "\n" not in line for line in res.errors)
    assert res.skipped == len(damaged) and res.files == len(files) - len(damaged)
    _assert_restored(src, tmp_path / "out" / "src", files, damaged)


def test_restore_through_the_prefetch_stream_fails_only_the_files_past_the_cut(repo, tmp_path, one_pack):
    """A restore to a URL reads through ops.prefetch (Repository.read_blobs), as tar does."""
    bid, src, files, pack, path = one_pack
    cut = _cut_inside(files, False)
    os.truncate(path, cut)
    _reread(repo)
    damaged = _damaged(files, lambda e: e.offset + e.length > cut)
    res = repo.restore(bid, f"file://{tmp_path}/out", src)
    assert sorted(_error_paths(res.errors)) == sorted(damaged)
    assert res.skipped == len(damaged)
    _assert_restored(src, tmp_path / "out" / "src", files, damaged)


def test_prefetch_yields_every_intact_file(repo, one_pack):
    """The stream tar reads: each file's chunks, or the error of the one damaged blob."""
    bid, src, files, pack, path = one_pack
    cut = _cut_inside(files, False)
    os.truncate(path, cut)
    _reread(repo)
    r = repo.repository
    failed = []
    for e, pf in prefetch(r, walk(r, bytes.fromhex(r.resolve_backup(bid).root), "/")):
        if pf is None:
            continue
        shown = "/" + os.fsdecode(e.path)
        try:
            data = b"".join(pf.data())
        except ChunkrepoError as exc:
            assert "truncated" in str(exc)
            failed.append(shown)
            continue
        with open(shown, "rb") as f:
            assert data == f.read(), shown
    assert failed == _damaged(files, lambda e: e.offset + e.length > cut)


def test_tar_of_a_truncated_pack_leaves_out_exactly_the_damaged_files(repo, tmp_path, one_pack):
    """tar goes on past the files it cannot read (one chunk each: left out before their
    header), names each of them, exits 1 and keeps an archive GNU tar and tarfile read,
    in which every intact file (also those read in the same ranged read) is whole."""
    bid, src, files, pack, path = one_pack
    cut = _cut_inside(files, False)
    os.truncate(path, cut)
    damaged = _damaged(files, lambda e: e.offset + e.length > cut)
    assert 0 < len(damaged) < len(files)
    out = tmp_path / "x.tar"
    result = CliRunner().invoke(cli, ["tar", "--repo", str(repo.path), bid, src, "-o", str(out)])
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert [ln.split(": ")[1] for ln in lines[:-1]] == damaged, lines
    assert all(ln.endswith(": left out of the archive") for ln in lines[:-1])
    assert lines[-1].startswith(f"chunkrepo: error: the archive was written without the content of {len(damaged)} ")
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(["tar", "xf", str(out), "-C", str(x)], check=True)
    with tarfile.open(out) as t:
        members = {"/" + m.name for m in t.getmembers() if m.isfile()}
    assert members == set(files) - set(damaged)
    for p in members:
        with open(p, "rb") as f:
            assert (x / p.lstrip("/")).read_bytes() == f.read(), p


def test_tar_zero_fills_a_multi_chunk_file_from_its_damaged_chunk(repo, tmp_path):
    """A file of several chunks has its header out before its last chunk is read: a damaged
    chunk there becomes zeros up to the size the header gave (as GNU tar pads a file that
    shrank), the archive goes on with the next member, and the error says which bytes."""
    src = tmp_path / "src"
    src.mkdir()
    big = write_random(src / "big.bin", 3 << 20, seed=7)
    (src / "z.txt").write_bytes(b"after the damaged file\n")
    bid = repo.backup([src]).id
    files = _files(repo, bid)
    entries = files[str(big)]
    assert len(entries) >= 2
    last = entries[-1]
    _flip_blob(repo, last)
    good = (3 << 20) - last.raw_length
    result, x = _tar_and_extract(repo, bid, src, tmp_path)
    assert f"{big}: " in result.stderr and f"bytes {good} to {3 << 20} are zeros in the archive" in result.stderr
    got = (x / str(big).lstrip("/")).read_bytes()
    assert len(got) == 3 << 20 and got[:good] == big.read_bytes()[:good] and got[good:] == bytes(len(got) - good)
    assert (x / str(src / "z.txt").lstrip("/")).read_bytes() == b"after the damaged file\n"


def test_restore_with_a_flipped_byte_fails_the_files_of_that_blob(repo, tmp_path, one_pack):
    bid, src, files, pack, path = one_pack
    size = os.path.getsize(path)
    blobs = sorted({(e.offset, e.length) for entries in files.values() for e in entries})
    offset, length = blobs[len(blobs) // 2]
    at = offset + length // 2
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))
    assert os.path.getsize(path) == size
    _reread(repo)
    damaged = _damaged(files, lambda e: e.offset <= at < e.offset + e.length)
    assert len(damaged) == 1
    res = repo.restore(bid, tmp_path / "out", src)
    assert _error_paths(res.errors) == damaged
    _assert_restored(src, tmp_path / "out" / "src", files, damaged)


def test_restore_with_a_pack_deleted_fails_its_files_reading_it_once_per_run(repo, tmp_path):
    """A missing pack fails every file with a blob in it, the others are restored, and the
    blobs of a failed ranged read are not asked for one by one (the object is gone)."""
    src = tmp_path / "src"
    _small_files(src / "a", [f"f{i:02}" for i in range(30)], seed=3)
    repo.backup([src])
    _small_files(src / "b", [f"g{i:02}" for i in range(30)], seed=4)    # a second pack
    bid = repo.backup([src]).id
    files = _files(repo, bid)
    gone = files[str(src / "b" / "g00")][0].pack
    os.unlink(os.path.join(repo.repository.path, pack_name(gone)))
    damaged = _damaged(files, lambda e: e.pack == gone)
    assert len(damaged) == 30
    gets = Fault("get", "packs/", after=1 << 30)      # never fires: counts the reads of packs
    with Repo(repo.path, wrap_storage=lambda s: FaultyStorage(s, [gets])) as counted:
        res = counted.restore(bid, f"file://{tmp_path}/out", str(src))
    assert sorted(_error_paths(res.errors)) == sorted(damaged)
    _assert_restored(str(src), tmp_path / "out" / "src", files, damaged)
    assert gets.hits < 10        # a few ranged reads, not one per blob (60)


def test_intact_blobs_after_the_cut_of_another_pack_are_read(repo, tmp_path):
    """One read run spanning two packs: the first cut short, the second whole.  The blobs read
    one at a time after the failed read do not disturb where the next read's bytes go."""
    src = tmp_path / "src"
    _small_files(src / "a", [f"f{i:02}" for i in range(20)], seed=5)
    repo.backup([src])
    _small_files(src / "b", [f"g{i:02}" for i in range(20)], seed=6)
    bid = repo.backup([src]).id
    files = _files(repo, bid)
    first = files[str(src / "a" / "f00")][0].pack
    assert files[str(src / "b" / "g00")][0].pack != first
    blobs = sorted({(e.offset, e.length) for entries in files.values() for e in entries if e.pack == first})
    cut = blobs[-3][0] + 1
    os.truncate(os.path.join(repo.repository.path, pack_name(first)), cut)
    _reread(repo)
    damaged = _damaged(files, lambda e: e.pack == first and e.offset + e.length > cut)
    assert len(damaged) == 3
    res = repo.restore(bid, tmp_path / "out", str(src))
    assert sorted(_error_paths(res.errors)) == sorted(damaged)
    _assert_restored(str(src), tmp_path / "out" / "src", files, damaged)


class _Unreachable:
    """A storage whose packs cannot be reached (a connection reset on every read)."""

    def __init__(self, inner):
        self._inner = inner
        self.pack_reads = 0

    def get(self, name, offset=0, length=None):
        if name.startswith("packs/"):
            self.pack_reads += 1
            raise ConnectionResetError(104, "Connection reset by peer")
        return self._inner.get(name, offset, length)

    def __getattr__(self, attr):
        return getattr(self._inner, attr)


def test_a_read_the_storage_gave_up_on_is_not_repeated_blob_by_blob(repo, tmp_path, one_pack):
    """Every file fails, each ranged read costing its retries once: reading its blobs
    alone would repeat the retries for each of them."""
    bid, src, files, pack, path = one_pack
    seen = []

    def wrap(s):
        seen.append(_Unreachable(s))
        return RetryingStorage(seen[-1], attempts=2, sleep=lambda _: None)
    with Repo(repo.path, wrap_storage=wrap) as r:
        res = r.restore(bid, tmp_path / "out", src)
    assert sorted(_error_paths(res.errors)) == sorted(files)
    assert all("gave up after 2 attempts" in line for line in res.errors)
    assert 0 < seen[0].pack_reads <= 2 * 4       # 2 attempts of a few ranged reads, not of 60 blobs


def test_tar_leaves_out_the_hard_links_of_a_left_out_file(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"linked content\n" * 100)
    os.link(src / "a.txt", src / "b.txt")
    (src / "c.txt").write_bytes(b"intact\n")
    bid = repo.backup([src]).id
    _flip_blob(repo, _files(repo, bid)[str(src / "a.txt")][0])     # a.txt's blob only
    result, x = _tar_and_extract(repo, bid, src, tmp_path)               # GNU tar: no dangling link member
    assert f"{src}/a.txt: " in result.stderr and f"{src}/b.txt: a hard link to {src}/a.txt" in result.stderr
    assert sorted(p.name for p in (x / str(src).lstrip("/")).iterdir()) == ["c.txt"]
