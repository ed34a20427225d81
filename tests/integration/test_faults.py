"""Faults injected under a real local storage: a full disk, I/O errors, short
writes and failed renames during backup and prune fail with one clear error and
leave a repository that checks clean, keeps every earlier backup, and takes the
next backup or prune without trouble."""

import pytest

from chunkrepo import Repo
from chunkrepo.errors import StorageError
from chunkrepo.repository.config import Config
from chunkrepo.storage.faults import Fault, FaultyStorage
from tests.conftest import age, write_random


def _src(root, seed):
    root.mkdir(exist_ok=True)
    for i in range(5):
        write_random(root / f"f{seed}-{i}.bin", 600_000, seed=seed * 10 + i)
        age(root / f"f{seed}-{i}.bin")
    return root


def _healthy(path, before, src):
    with Repo(path) as repo:
        report = repo.check(read_data=True)
        assert report.ok, report.errors
        with repo.open_file(before.id, src / "f1-0.bin") as f:
            assert f.read() == (src / "f1-0.bin").read_bytes()
        after = repo.backup([src])
        for i in range(5):
            with repo.open_file(after.id, src / f"f2-{i}.bin") as f:
                assert f.read() == (src / f"f2-{i}.bin").read_bytes()
        assert repo.check(read_data=True).ok


@pytest.mark.parametrize("fault, message", [
    (Fault("write", "packs/", after=2, kind="ENOSPC"), "no space left on device"),
    (Fault("write", "packs/", after=1, kind="EIO"), "Input/output error"),
    (Fault("write", "packs/", after=3, kind="short"), "no space left on device"),
    (Fault("commit", "packs/", after=1, kind="EIO"), "renaming packs/"),
    (Fault("commit", "backups/", kind="ENOSPC"), "no space left on device"),
])
def test_backup_fails_cleanly(tmp_path, fault, message):
    path = tmp_path / "repo"
    Repo.init(path, Config(pack_size=1 << 20)).close()
    src = _src(tmp_path / "src", 1)
    with Repo(path) as repo:
        before = repo.backup([src])
    _src(src, 2)
    with Repo(path, wrap_storage=lambda s: FaultyStorage(s, [fault])) as repo:
        with pytest.raises(StorageError, match=message) as info:
            repo.backup([src])
        assert "\n" not in str(info.value)
        assert len(repo.list_backups()) == 1
    _healthy(path, before, src)


@pytest.mark.parametrize("fault", [
    Fault("write", "packs/", kind="ENOSPC"),        # the repacked pack cannot be written
    Fault("commit", "packs/", kind="EIO"),
    Fault("delete", "packs/", kind="EIO"),          # an old pack cannot be removed
])
def test_prune_fails_cleanly(tmp_path, fault):
    path = tmp_path / "repo"
    Repo.init(path, Config(pack_size=1 << 20)).close()
    src = _src(tmp_path / "src", 1)
    with Repo(path) as repo:
        first = repo.backup([src])
        (src / "f1-1.bin").unlink()
        (src / "f1-3.bin").unlink()
        kept = repo.backup([src])
        repo.forget([first.id])
    with Repo(path, wrap_storage=lambda s: FaultyStorage(s, [fault])) as repo:
        with pytest.raises(StorageError) as info:
            repo.prune()
        assert "\n" not in str(info.value)
    assert fault.hits > fault.after          # the fault really fired
    with Repo(path) as repo:
        assert repo.check(read_data=True).ok
        with repo.open_file(kept.id, src / "f1-0.bin") as f:
            assert f.read() == (src / "f1-0.bin").read_bytes()
        repo.prune()
        assert repo.check(read_data=True).ok
    _src(src, 2)
    _healthy(path, kept, src)
