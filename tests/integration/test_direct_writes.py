"""Restore writes big files, and tar -o its archive, with O_DIRECT (chunkrepo.direct_io):
the same bytes and sizes as buffered writes, at lengths around every alignment, with
O_DIRECT on and off (CHUNKREPO_DIRECT_IO=0); stdout stays buffered and keeps its flags;
holes stay holes; a full disk is one clean error.  (A real refusal of O_DIRECT, at an
unaligned position, is in tests/unit/test_direct_io.py.)"""

import io
import os
import random
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

from chunkrepo import Repo
from chunkrepo.direct_io import ENV
from chunkrepo.errors import StorageError
from tests.conftest import small_tmpfs, write_random

MiB = 1 << 20
SIZES = [0, 1, 4095, 4096, 4097, MiB - 1, MiB, MiB + 1, 4 * MiB + 4097, 9 * MiB + 1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("direct")
    src = base / "src"
    src.mkdir()
    for i, n in enumerate(SIZES):
        write_random(src / f"f{n}", n, seed=100 + i)
    # compressible: its chunks are zstd frames, decoded straight into the O_DIRECT buffer
    # where they fit there, through the reader's buffer where they do not
    (src / "text").write_bytes(_text(9 * MiB + 1))
    with open(src / "sparse", "wb") as f:        # 3 MiB of data between holes, 12 MiB in all
        for at in (1, 5, 9):
            f.seek(at * MiB + 7)
            f.write(os.urandom(MiB))
        f.truncate(12 * MiB)
    repo = Repo.init(base / "repo")
    bid = repo.backup([src]).id
    repo.close()
    return base, src, bid


def _text(n: int, seed: int = 5) -> bytes:
    """n bytes of words from a small vocabulary: zstd halves them, CDC finds varied cuts."""
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randrange(2, 9)).hex().encode() for _ in range(4000)]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rnd.choices(words, k=4096)) + b"\n"
    return bytes(out[:n])


def _cached_bytes(path):
    """How much of path is in the page cache (fincore), or None where that says nothing
    about O_DIRECT (no fincore; tmpfs, where direct I/O goes through the cache)."""
    if shutil.which("fincore") is None:
        return None
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()
    if fs in ("tmpfs", "ramfs", ""):
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True)
    return int(out.stdout) if out.returncode == 0 else None


def _same_files(src, got):
    for name in sorted(os.listdir(src)):
        a, b = src / name, got / name
        assert os.path.getsize(b) == os.path.getsize(a), name
        assert b.read_bytes() == a.read_bytes(), name
        assert os.stat(b).st_mtime_ns == os.stat(a).st_mtime_ns, name
    assert os.stat(got / "sparse").st_blocks * 512 < 6 * MiB       # the holes stayed holes


@pytest.mark.parametrize("direct", ["1", "0"])
def test_restore_gives_the_same_bytes_with_o_direct_on_and_off(world, tmp_path, monkeypatch, direct):
    base, src, bid = world
    monkeypatch.setenv(ENV, direct)
    with Repo(base / "repo") as repo:
        res = repo.restore(bid, tmp_path / "out", start=str(src))
    assert res.errors == []
    for name in (f"f{9 * MiB + 1}", "text"):
        cached = _cached_bytes(tmp_path / "out" / "src" / name)
        if direct == "1" and cached is not None:
            assert cached <= 4096          # only its tail went through the page cache
    _same_files(src, tmp_path / "out" / "src")


def _tar(base, bid, env, **kw):
    return subprocess.run([sys.executable, "-m", "chunkrepo", "tar", "--repo", str(base / "repo"), bid],
                          env=dict(os.environ, **env), check=True, **kw)


def test_tar_to_a_file_stdout_and_a_pipe_gives_the_same_archive(world, tmp_path):
    """-o FILE goes out with O_DIRECT, stdout (a file or a pipe) buffered, and with O_DIRECT
    off everything: the archives are identical and GNU tar extracts them."""
    base, src, bid = world
    piped = _tar(base, bid, {}, stdout=subprocess.PIPE).stdout
    subprocess.run([sys.executable, "-m", "chunkrepo", "tar", "--repo", str(base / "repo"), bid,
                    "-o", str(tmp_path / "o.tar")], check=True)
    cached = _cached_bytes(tmp_path / "o.tar")
    assert cached is None or cached <= 4096          # written with O_DIRECT but for its tail
    with open(tmp_path / "stdout.tar", "wb") as f:
        _tar(base, bid, {}, stdout=f)
    subprocess.run([sys.executable, "-m", "chunkrepo", "tar", "--repo", str(base / "repo"), bid,
                    "-o", str(tmp_path / "off.tar")], env=dict(os.environ, **{ENV: "0"}), check=True)
    for name in ("o.tar", "stdout.tar", "off.tar"):
        assert (tmp_path / name).read_bytes() == piped, name
    assert len(piped) % 10240 == 0
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "o.tar"), "-C", str(out)], check=True)
    _same_files(src, out / os.path.relpath(src, "/"))


def test_tar_to_stdout_shares_the_file_with_the_shell(world, tmp_path):
    """stdout appended to a file of 3 bytes, and written after the tar by the same shell at
    an unaligned position (which an O_DIRECT flag left on the description would refuse)."""
    base, src, bid = world
    piped = _tar(base, bid, {}, stdout=subprocess.PIPE).stdout
    path = tmp_path / "appended"
    path.write_bytes(b"abc")
    cmd = f"{shlex.quote(sys.executable)} -m chunkrepo tar --repo {shlex.quote(str(base / 'repo'))} {bid} && printf xyz"
    with open(path, "ab") as f:
        subprocess.run(["sh", "-c", cmd], stdout=f, check=True)
    data = path.read_bytes()
    assert data[:3] == b"abc" and data[3:-3] == piped and data[-3:] == b"xyz"
    data = data[:-3]
    with tarfile.open(fileobj=io.BytesIO(data[3:])) as tf:
        member = tf.getmember(os.path.relpath(src / f"f{9 * MiB + 1}", "/"))
        assert tf.extractfile(member).read() == (src / f"f{9 * MiB + 1}").read_bytes()


@pytest.fixture
def small_fs(tmp_path):
    with small_tmpfs(tmp_path / "mnt", "4m") as mnt:
        yield mnt


@pytest.mark.parametrize("procs", [None, 0], ids=["threads", "processes"])
def test_restore_onto_a_full_disk_stops_with_one_line_and_leaves_no_partial_file(world, small_fs, procs):
    base, src, bid = world
    with Repo(base / "repo") as repo:
        with pytest.raises(StorageError) as exc:
            repo.restore(bid, small_fs / "out", start=str(src / f"f{9 * MiB + 1}"), processes_after=procs)
    assert "No space left on device" in str(exc.value) and "\n" not in str(exc.value)
    assert os.listdir(small_fs / "out") == []


def test_tar_onto_a_full_disk_is_one_line_and_leaves_no_archive(world, small_fs):
    base, src, bid = world
    p = subprocess.run([sys.executable, "-m", "chunkrepo", "tar", "--repo", str(base / "repo"), bid,
                        "-o", str(small_fs / "o.tar")], capture_output=True, text=True)
    assert p.returncode != 0
    assert p.stderr.startswith("chunkrepo: error: ") and p.stderr.count("\n") == 1, p.stderr
    assert "space" in p.stderr.lower()
    assert os.listdir(small_fs) == []
