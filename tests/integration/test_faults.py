"""Faults injected under a real local storage: a full disk, I/O errors, short
writes and failed renames during backup and prune fail with one clear error and
leave a repository that checks clean, keeps every earlier backup, and takes the
next backup or prune without trouble."""

import io
import os
import subprocess
import sys
import tarfile

import pytest

from chunkrepo import Repo
from chunkrepo.errors import StorageError
from chunkrepo.repository.config import Config
from chunkrepo.storage.faults import Fault, FaultyStorage
from tests.conftest import age, write_random

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    (Fault("commit", "packs/", after=1, kind="late"), "writing packs/.*Input/output error"),
    (Fault("create", "packs/", after=1, kind="ENOSPC"), "no space left on device.*creating packs/"),
    (Fault("create", "backups/", kind="EIO"), "creating backups/.*Input/output error"),
    (Fault("list", "packs", kind="EIO"), "listing packs.*Input/output error"),
    (Fault("list", "backups", kind="EIO"), "listing backups.*Input/output error"),
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
        assert [r.id for r in repo.list_backups()] == [before.id]
    assert fault.fired == 1
    _healthy(path, before, src)


@pytest.mark.parametrize("fault", [
    Fault("write", "packs/", kind="ENOSPC"),        # the repacked pack cannot be written
    Fault("commit", "packs/", kind="EIO"),
    Fault("delete", "packs/", kind="EIO"),          # an old pack cannot be removed
    Fault("write", "packs/", after=2, kind="short"),
    Fault("commit", "packs/", kind="late"),         # the new pack is in place, then EIO
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


@pytest.mark.parametrize("fault, message", [
    (Fault("put", "backups/", kind="EIO"), "writing backups/.*Input/output error"),
    (Fault("write", "backups/", kind="short"), "no space left on device while writing backups/"),
])
def test_backup_record_that_cannot_be_stored(tmp_path, fault, message):
    path = tmp_path / "repo"
    Repo.init(path, Config(pack_size=1 << 20)).close()
    src = _src(tmp_path / "src", 1)
    with Repo(path) as repo:
        before = repo.backup([src])
    _src(src, 2)
    with Repo(path, wrap_storage=lambda s: FaultyStorage(s, [fault])) as repo:
        with pytest.raises(StorageError, match=message):
            repo.backup([src])
        assert [r.id for r in repo.list_backups()] == [before.id]
    assert fault.fired == 1
    assert not list((path / "backups").iterdir()) or \
        {p.name for p in (path / "backups").iterdir()} == {before.id}    # no half record left
    _healthy(path, before, src)


def test_prune_cannot_read_a_pack_it_would_rewrite(tmp_path):
    """EIO reading the live blobs of a pack to repack: reported, that pack kept whole."""
    path = tmp_path / "repo"
    Repo.init(path, Config(pack_size=1 << 20)).close()
    src = _src(tmp_path / "src", 1)
    with Repo(path) as repo:
        first = repo.backup([src])
        (src / "f1-1.bin").unlink()
        kept = repo.backup([src])
        repo.forget([first.id])
        plan = repo.prune(dry_run=True)
    assert plan.packs_rewritten >= 1          # else this test would test nothing
    fault = Fault("get", "packs/", kind="EIO")
    with Repo(path, wrap_storage=lambda s: FaultyStorage(s, [fault])) as repo:
        rep = repo.prune()
    assert fault.fired >= 1
    assert rep.errors and all("Input/output error" in e and "pack kept" in e for e in rep.errors)
    with Repo(path) as repo:
        assert repo.check(read_data=True).ok
        rep = repo.prune()
        assert rep.errors == [] and rep.packs_rewritten >= 1
        assert repo.check(read_data=True).ok
    _src(src, 2)
    _healthy(path, kept, src)


def test_read_error_during_tar_restore_and_open_names_the_file(tmp_path):
    path = tmp_path / "repo"
    Repo.init(path, Config(pack_size=1 << 20)).close()
    src = _src(tmp_path / "src", 1)
    with Repo(path) as repo:
        b = repo.backup([src])

    def faulty():
        return Repo(path, wrap_storage=lambda s: FaultyStorage(s, [Fault("get", "packs/", kind="EIO")]))

    rel = str(src / "f1-0.bin").lstrip("/")
    with faulty() as repo:
        # tar, like restore, goes on past the files it cannot read and names each of them
        stats = repo.produce_tar(b.id, io.BytesIO())
        assert len(stats["errors"]) == 5, stats["errors"]
        assert all(m.startswith(str(src) + "/f1-") and "Input/output error" in m for m in stats["errors"])
        with pytest.raises(StorageError, match=f"^/{rel}: reading packs/.*Input/output error"):
            with repo.open_file(b.id, src / "f1-0.bin") as f:
                f.read()
        res = repo.restore(b.id, tmp_path / "out")
        assert len(res.errors) == 5
        assert all(e.startswith(str(src) + "/f1-") and "Input/output error" in e for e in res.errors)
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))   # no partial files
    with Repo(path) as repo:                  # the data was never damaged
        res = repo.restore(b.id, tmp_path / "out2")
        assert res.errors == []
        assert (tmp_path / "out2" / rel).read_bytes() == (src / "f1-0.bin").read_bytes()


def _cli(faults, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, CHUNKREPO_FAULTS=faults)
    return subprocess.run([sys.executable, "-m", "chunkrepo", *args], capture_output=True, env=env)


def test_cli_fails_with_one_line_under_faults_from_the_environment(tmp_path):
    path = tmp_path / "repo"
    Repo.init(path, Config(pack_size=1 << 20)).close()
    src = _src(tmp_path / "src", 1)
    with Repo(path) as repo:
        before = repo.backup([src])
    _src(src, 2)
    p = _cli("write:packs/:1:ENOSPC", "backup", "--repo", str(path), str(src))
    err = p.stderr.decode()
    assert p.returncode == 1 and err.startswith("chunkrepo: error: no space left on device while writing packs/")
    assert err.count("\n") == 1 and "Traceback" not in err, err
    p = _cli("get:packs/:0:EIO", "tar", "--repo", str(path), before.id, "-o", str(tmp_path / "x.tar"))
    err = p.stderr.decode().splitlines()
    assert p.returncode == 1 and len(err) == 6 and "Traceback" not in p.stderr.decode(), err
    assert all(f"{str(src).lstrip('/')}/f1-" in e and "Input/output error" in e for e in err[:5]), err
    assert err[5].startswith("chunkrepo: error: the archive was written without the content of 5 "), err
    with tarfile.open(tmp_path / "x.tar") as t:      # a whole archive, without those files' content
        assert not any(m.isfile() and m.name.endswith(".bin") and m.size <= (1 << 20) for m in t)
    p = _cli("get:packs/:0:EIO", "restore", "--repo", str(path), before.id, "--target", str(tmp_path / "o"))
    err = p.stderr.decode()
    assert p.returncode == 1 and f"chunkrepo: {src}/f1-0.bin: reading packs/" in err, err
    p = _cli("get:packs/:0:sometimes", "list-backups", "--repo", str(path))
    assert p.returncode == 1 and "CHUNKREPO_FAULTS" in p.stderr.decode()
    p = _cli("", "backup", "--repo", str(path), str(src))      # no faults: all is well
    assert p.returncode == 0, p.stderr.decode()
    _healthy(path, before, src)


def test_backup_record_in_place_when_the_error_comes(tmp_path):
    """The record was renamed into place, then fsync failed: the user saw an error, yet
    the backup is complete; the next write session adopts it and it reads back whole."""
    path = tmp_path / "repo"
    Repo.init(path, Config(pack_size=1 << 20)).close()
    src = _src(tmp_path / "src", 1)
    with Repo(path) as repo:
        before = repo.backup([src])
    _src(src, 2)
    fault = Fault("commit", "backups/", kind="late")
    with Repo(path, wrap_storage=lambda s: FaultyStorage(s, [fault])) as repo:
        with pytest.raises(StorageError, match="record was written but not confirmed durable "
                                               r"\(.*writing backups/.*Input/output error\); the next write "
                                               "session adopts it") as info:
            repo.backup([src])
        stored = [p.name for p in (path / "backups").iterdir() if p.name != before.id]
        assert len(stored) == 1 and str(info.value).startswith(f"backup {stored[0]}: ")
        assert len(repo.list_backups()) == 1
        assert repo.check(read_data=True).ok
    with Repo(path) as repo:
        res = repo.backup([src])              # recovery registers the record left in place
        recs = repo.list_backups()
        assert len(recs) == 3 and res.bytes_new == 0
        adopted = [r for r in recs if r.id not in (before.id, res.id)][0]
        with repo.open_file(adopted.id, src / "f2-3.bin") as f:
            assert f.read() == (src / "f2-3.bin").read_bytes()
        assert repo.check(read_data=True).ok


def test_cli_says_a_late_failing_record_is_in_place_and_exits_non_zero(tmp_path):
    path = tmp_path / "repo"
    Repo.init(path, Config(pack_size=1 << 20)).close()
    src = _src(tmp_path / "src", 1)
    p = _cli("commit:backups/:0:late", "backup", "--repo", str(path), str(src))
    err = p.stderr.decode().strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1, err
    assert "record was written but not confirmed durable" in err and "adopts it" in err
    bid = err.split("backup ", 1)[1].split(":", 1)[0]
    assert os.path.exists(path / "backups" / bid)
    p = _cli("", "list-backups", "--repo", str(path))
    assert bid not in p.stdout.decode()            # not registered by the failing session ...
    p = _cli("", "prune", "--repo", str(path))     # ... adopted by the next one
    assert p.returncode == 0, p.stderr.decode()
    assert bid in _cli("", "list-backups", "--repo", str(path)).stdout.decode()


@pytest.mark.parametrize("fault", [
    Fault("create", "packs/", kind="ENOSPC"),        # the repacked pack cannot be started
    Fault("list", "packs", kind="EIO"),              # recovery cannot list the packs
    Fault("size", "packs/", kind="EIO"),             # reading a trailer to repack
])
def test_prune_fails_cleanly_on_create_list_and_size(tmp_path, fault):
    path = tmp_path / "repo"
    Repo.init(path, Config(pack_size=1 << 20)).close()
    src = _src(tmp_path / "src", 1)
    with Repo(path) as repo:
        first = repo.backup([src])
        (src / "f1-1.bin").unlink()
        kept = repo.backup([src])
        repo.forget([first.id])
    with Repo(path, wrap_storage=lambda s: FaultyStorage(s, [fault])) as repo:
        try:
            rep = repo.prune(repack_threshold=0.0)
            assert rep.errors and all(fault.op in e or "Input/output" in e for e in rep.errors)
        except StorageError as e:
            assert "\n" not in str(e) and ("space" in str(e) or "Input/output" in str(e))
    assert fault.fired >= 1
    with Repo(path) as repo:
        assert repo.check(read_data=True).ok
        with repo.open_file(kept.id, src / "f1-0.bin") as f:
            assert f.read() == (src / "f1-0.bin").read_bytes()
        repo.prune(repack_threshold=0.0)
        assert repo.check(read_data=True).ok
    _src(src, 2)
    _healthy(path, kept, src)


def test_check_and_repair_leave_a_pack_alone_on_an_io_error(tmp_path):
    """EIO examining a pack is reported, and repair does not treat it as lost data."""
    path = tmp_path / "repo"
    Repo.init(path, Config(pack_size=1 << 20)).close()
    src = _src(tmp_path / "src", 1)
    with Repo(path) as repo:
        before = repo.backup([src])
    fault = Fault("size", "packs/", after=2, kind="EIO", times=1 << 20)
    with Repo(path, wrap_storage=lambda s: FaultyStorage(s, [fault])) as repo:
        rep = repo.check()
        assert not rep.ok and any("cannot be examined" in e and "Input/output" in e for e in rep.errors)
        rep = repo.check(repair=True)
        assert rep.repair.unrepaired and rep.repair.packs_salvaged == 0 and rep.repair.blobs_lost == 0
        assert any("not repaired" in a for a in rep.repair.actions)
        assert repo.damaged_backups() == {}          # not known to have lost anything
    with Repo(path) as repo:                         # the storage reads again: all is there
        rep = repo.check(read_data=True, repair=True)
        assert rep.ok and rep.repair.nothing_to_do
    _src(src, 2)
    _healthy(path, before, src)
