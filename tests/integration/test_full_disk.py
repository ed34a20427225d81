"""A full disk under the repository: a one-line StorageError, nothing damaged, and the
next backup succeeds once there is room (it may reuse packs the failed one sealed)."""

import os
import subprocess
import time

import pytest

from chunkrepo import Repo
from chunkrepo.errors import StorageError
from chunkrepo.repository.config import Config
from tests.conftest import small_tmpfs, write_random


@pytest.fixture
def small_fs(tmp_path):
    with small_tmpfs(tmp_path / "mnt", "8m") as mnt:
        yield mnt


def _grow(mnt, size):
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


def _temporaries(root) -> list:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.startswith(".tmp-")]


@pytest.mark.parametrize("readers", [None, 0], ids=["threads", "processes"])
def test_full_disk_is_one_clean_error_and_nothing_is_damaged(small_fs, tmp_path, readers):
    """readers: BackupOptions.processes_after (None: reader threads; 0: reader processes
    from the first batch, whose open packs the failure must not leave behind either)."""
    small = tmp_path / "small"
    small.mkdir()
    write_random(small / "a.bin", 1 << 20, seed=1)
    (small / "t.txt").write_text("some text\n" * 1000)
    big = tmp_path / "big"
    big.mkdir()
    for i in range(5):
        write_random(big / f"{i}.bin", 3 << 20, seed=20 + i)    # 15 MiB, incompressible
    with Repo.init(small_fs / "repo", Config(pack_size=1 << 20)) as repo:
        first = repo.backup([small])
        assert first.errors == []
        with pytest.raises(StorageError) as exc:
            repo.backup([big], processes_after=readers)
        msg = str(exc.value)
        assert "no space" in msg.lower() and "\n" not in msg
        assert [r.id for r in repo.list_backups()] == [first.id]
        assert _temporaries(small_fs / "repo") == []
    with Repo(small_fs / "repo") as repo:
        rep = repo.check(read_data=True)
        assert rep.ok, rep.errors
        for name in ("a.bin", "t.txt"):
            with repo.open_file(first.id, small / name) as f:
                assert f.read() == (small / name).read_bytes()
        _grow(small_fs, "64m")
        res = repo.backup([big], processes_after=readers)
        assert res.errors == [] and res.reader_processes == (2 if readers == 0 else 0)
        # the packs the failed backup sealed before the disk filled were adopted
        assert rep.unreferenced_packs >= 1
        assert res.bytes_new <= (15 << 20) - (1 << 20) * rep.unreferenced_packs // 2
        rep = repo.check(read_data=True)
        assert rep.ok, rep.errors
        for i in range(5):
            with repo.open_file(res.id, big / f"{i}.bin") as f:
                assert f.read() == (big / f"{i}.bin").read_bytes()
        with repo.open_file(first.id, small / "a.bin") as f:
            assert f.read() == (small / "a.bin").read_bytes()


def test_full_disk_while_committing_the_index(small_fs, tmp_path):
    """Metadata-only backups (content deduplicated, new directory records) on a disk
    filled to within a few KiB: the failure comes in the small pack or in the index
    commit (LMDB reports that short write as EIO); either way it is one line about
    space, the repository checks clean, and the backup succeeds once there is room."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"f{i:03}.txt").write_bytes(os.urandom(3000))
    with Repo.init(small_fs / "repo", Config(pack_size=1 << 20)) as repo:
        first = repo.backup([src])
        filler = small_fs / "filler"
        messages = []
        for leave in range(96_000, -1, -8000):
            t = time.time_ns() - 10**10 - leave
            for i in range(300):
                os.utime(src / f"f{i:03}.txt", ns=(t, t))
            st = os.statvfs(small_fs)
            with open(filler, "wb") as f:
                try:
                    f.write(bytes(max(0, st.f_bavail * st.f_frsize - leave)))
                except OSError:
                    pass
            try:
                res = repo.backup([src])
                assert res.bytes_new == 0 and res.errors == []
            except StorageError as e:
                assert "no space" in str(e).lower() and "\n" not in str(e)
                messages.append(str(e))
            os.unlink(filler)
            rep = repo.check(read_data=True)
            assert rep.ok, (leave, rep.errors)
        assert any("writing the index" in m for m in messages), messages
        with repo.open_file(first.id, src / "f000.txt") as f:
            assert f.read() == (src / "f000.txt").read_bytes()
        res = repo.backup([src])
        assert res.errors == [] and res.files == 300
        assert repo.check(read_data=True).ok


def test_completely_full_disk_still_takes_and_releases_the_lock(small_fs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(os.urandom(50_000))
    with Repo.init(small_fs / "repo", Config(pack_size=1 << 20)) as repo:
        first = repo.backup([src])
        (src / "b.txt").write_bytes(os.urandom(50_000))
        filler = small_fs / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(bytes(4096))
            except OSError:
                pass
        with pytest.raises(StorageError) as exc:     # not a bare OSError from the lock file
            repo.backup([src])
        assert "no space" in str(exc.value).lower()
        os.unlink(filler)
        res = repo.backup([src])                     # the lock was not left held
        assert res.errors == [] and res.files == 2
        assert repo.check(read_data=True).ok
        with repo.open_file(first.id, src / "a.txt") as f:
            assert f.read() == (src / "a.txt").read_bytes()
