"""A writer that loses its lock while it is stopped, and SIGTERM (docs/format.md, "Lock object").

The writer is a `chunkrepo backup` subprocess on S3 (moto) that SIGSTOPs itself at a
named point (CHUNKREPO_STOP_AT, repository/crash_points.py); meanwhile "another host"
(this process, with an index cache of its own) removes the lock as `chunkrepo unlock`
does there, forgets the backup the writer deduplicated against, prunes, and makes a
backup of its own; then the writer is continued.
"""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from chunkrepo import Repo
from chunkrepo.repository.lease import LeaseLock, read_lock
from tests.conftest import age, write_random


def _cli(info, cache, *args, stop_at=None):
    """A `chunkrepo` subprocess on the moto repository; stopped at stop_at once it gets there."""
    env = dict(os.environ, CHUNKREPO_INDEX_CACHE=str(cache), AWS_ACCESS_KEY_ID=info["key"],
               AWS_SECRET_ACCESS_KEY=info["secret"], AWS_DEFAULT_REGION="us-east-1")
    env.pop("CHUNKREPO_STOP_AT", None)
    if stop_at:
        env["CHUNKREPO_STOP_AT"] = stop_at
    repo_args = ("--repo", f"{info['url']}/repo", "--storage-option", f"endpoint_url={info['endpoint_url']}")
    p = subprocess.Popen([sys.executable, "-m", "chunkrepo", *args, *repo_args], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if stop_at:
        _, status = os.waitpid(p.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            pytest.fail(f"the writer ended before {stop_at}: {p.stderr.read().decode()}")
    return p


def _resume(p):
    os.kill(p.pid, signal.SIGCONT)
    out, err = p.communicate(timeout=120)
    return p.returncode, out.decode(), err.decode()


def _open(info, monkeypatch, cache):
    monkeypatch.setenv("CHUNKREPO_INDEX_CACHE", str(cache))
    return Repo(f"{info['url']}/repo", storage_options=info["storage_options"])


@pytest.fixture(params=["moto", pytest.param("ceph", marks=pytest.mark.ceph)])
def setup(request, tmp_path, monkeypatch):
    """(repository info, host A's cache, P1's id, the source dirs): P1 holds d3/u;
    d4/a0 is a copy of it, so a backup of d4 stores none of its chunks."""
    info = request.getfixturevalue(f"{request.param}_s3")
    d3, d4, d5 = (tmp_path / n for n in ("d3", "d4", "d5"))
    for d in (d3, d4, d5):
        d.mkdir()
    write_random(d3 / "u", 3 << 20, seed=3)
    shutil.copy(d3 / "u", d4 / "a0")
    write_random(d5 / "other", 100_000, seed=5)
    for f in (d3 / "u", d4 / "a0", d5 / "other"):
        age(f)
    monkeypatch.setenv("CHUNKREPO_INDEX_CACHE", str(tmp_path / "hostA"))
    with Repo.init(f"{info['url']}/repo", storage_options=info["storage_options"]) as repo:
        p1 = repo.backup([d3]).id
    return info, tmp_path / "hostA", p1, (d3, d4, d5)


def _other_host_forgets_and_prunes(info, monkeypatch, tmp_path, p1, d5):
    """Host B: unlock (the writer of host A looks gone), forget P1 --prune, a backup of
    its own; returns that backup's id."""
    with _open(info, monkeypatch, tmp_path / "hostB") as repo:
        repo.repository.storage.delete("lock")
        res = repo.forget([p1], prune=True)
        assert res.prune.packs_deleted >= 1         # P1's chunks, which A's backup uses, are gone
        return repo.backup([d5]).id


def _stored_backups(info, monkeypatch, tmp_path):
    with _open(info, monkeypatch, tmp_path / "fresh") as repo:
        return {n.rsplit("/", 1)[1] for n in repo.repository.storage.list("backups")}


def test_a_writer_whose_lock_was_taken_stops_before_its_backup_record(setup, tmp_path, monkeypatch):
    info, host_a, p1, (_, d4, d5) = setup
    writer = _cli(info, host_a, "backup", str(d4), stop_at="backup-flushed")
    q = _other_host_forgets_and_prunes(info, monkeypatch, tmp_path, p1, d5)
    with _open(info, monkeypatch, tmp_path / "hostB") as repo:
        other = LeaseLock(repo.repository.storage)      # and another writer holds the lock now
        other.acquire()
        try:
            code, out, err = _resume(writer)
        finally:
            other.release()
    assert code == 1 and out == ""
    assert err.startswith("chunkrepo: error: lost the repository lock (now held by PID ") and err.count("\n") == 1
    assert "nothing more was committed" in err
    assert _stored_backups(info, monkeypatch, tmp_path) == {q}        # its record was not written
    with _open(info, monkeypatch, tmp_path / "fresh") as repo:
        report = repo.check(read_data=True)
        assert report.ok, report.errors
    with _open(info, monkeypatch, host_a) as repo:       # host A's cache follows the store
        assert [b.id for b in repo.list_backups()] == [q]


def test_a_writer_stopped_between_the_check_and_its_record_says_so(setup, tmp_path, monkeypatch):
    """The window the check leaves (docs/format.md): the record is stored, the writer
    fails with a message that names it and asks for check, and check finds the damage."""
    info, host_a, p1, (_, d4, d5) = setup
    writer = _cli(info, host_a, "backup", str(d4), stop_at="backup-checked")
    q = _other_host_forgets_and_prunes(info, monkeypatch, tmp_path, p1, d5)
    code, out, err = _resume(writer)
    stored = _stored_backups(info, monkeypatch, tmp_path) - {q}
    assert code == 1 and len(stored) == 1 and err.count("\n") == 1
    bid = stored.pop()
    assert err.startswith("chunkrepo: error: lost the repository lock (the lock object was removed); ")
    assert f"backup {bid} was stored while it was lost" in err and "run 'chunkrepo check'" in err
    with _open(info, monkeypatch, tmp_path / "fresh") as fresh, _open(info, monkeypatch, host_a) as a:
        assert [b.id for b in a.list_backups()] == [b.id for b in fresh.list_backups()]
        # blobs it refers to went with P1's packs: it cannot be registered (check counts it pending)
        assert [b.id for b in fresh.list_backups()] == [q] and fresh.check().pending_backups == 1


def test_a_record_stored_after_a_mere_unlock_is_listed_by_the_writers_cache(setup, tmp_path, monkeypatch):
    """Its lock was removed between the check and the PUT, and no other writer began:
    the writer still says so, and its cache (kept, since the generation did not move)
    lists the sound backup it stored."""
    info, host_a, p1, (_, d4, _) = setup
    writer = _cli(info, host_a, "backup", str(d4), stop_at="backup-checked")
    with _open(info, monkeypatch, tmp_path / "hostB") as repo:
        repo.repository.storage.delete("lock")
    code, out, err = _resume(writer)
    assert code == 1 and "was stored while it was lost" in err
    with _open(info, monkeypatch, tmp_path / "fresh") as repo:
        ids = [b.id for b in repo.list_backups()]
        assert len(ids) == 2 and ids[0] == p1
        report = repo.check(read_data=True)
        assert report.ok, report.errors
    with _open(info, monkeypatch, host_a) as repo:
        assert [b.id for b in repo.list_backups()] == ids


def test_a_writer_that_lost_its_lock_after_committing_leaves_its_cache_to_be_synced(setup, tmp_path, monkeypatch):
    """Another writer ran between its commit and its end: its cache must not record the
    store's new generation as one it reflects (it misses that writer's changes)."""
    info, host_a, p1, (_, d4, d5) = setup
    writer = _cli(info, host_a, "backup", str(d4), stop_at="backup-committed")
    q = _other_host_forgets_and_prunes(info, monkeypatch, tmp_path, p1, d5)
    code, out, err = _resume(writer)
    assert code == 0, err
    bid = out.split()[-1]
    with _open(info, monkeypatch, tmp_path / "fresh") as repo:
        assert [b.id for b in repo.list_backups()] == [bid, q]
        report = repo.check(read_data=True)       # B saw A's record at its sync: nothing it needs went
        assert report.ok, report.errors
    with _open(info, monkeypatch, host_a) as repo:
        assert [b.id for b in repo.list_backups()] == [bid, q]


def test_a_prune_whose_lock_was_taken_deletes_no_pack(setup, tmp_path, monkeypatch):
    """Host A's prune stops between dropping P1's packs from its index and deleting them;
    host B unlocks and backs up d4, whose chunks it finds in those packs (its cache
    adopted them as garbage, still stored): A must not delete them."""
    info, host_a, p1, (_, d4, _) = setup
    pruner = _cli(info, host_a, "forget", p1, "--prune", stop_at="prune-index-committed")
    with _open(info, monkeypatch, tmp_path / "hostB") as repo:
        repo.repository.storage.delete("lock")
        res = repo.backup([d4])
        assert res.bytes_new == 0
    code, out, err = _resume(pruner)
    assert code == 1 and err.startswith("chunkrepo: error: lost the repository lock (the lock object was removed)")
    with _open(info, monkeypatch, tmp_path / "fresh") as repo:
        assert [b.id for b in repo.list_backups()] == [res.id]
        report = repo.check(read_data=True)
        assert report.ok, report.errors


@pytest.mark.parametrize("where", ["s3", "local"])
def test_sigterm_releases_the_lock(setup, tmp_path, monkeypatch, where):
    """SIGTERM is handled as SIGINT: the session is abandoned, its lock released, exit 143."""
    info, host_a, _, (_, d4, _) = setup
    if where == "local":
        local = tmp_path / "local"
        Repo.init(local).close()
        env = dict(os.environ, CHUNKREPO_INDEX_CACHE=str(host_a), CHUNKREPO_STOP_AT="backup-checked")

        def cli(*args, stop_at=None):
            e = dict(env) if stop_at else {k: v for k, v in env.items() if k != "CHUNKREPO_STOP_AT"}
            p = subprocess.Popen([sys.executable, "-m", "chunkrepo", *args, "--repo", str(local)], env=e,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if stop_at:
                assert os.WIFSTOPPED(os.waitpid(p.pid, os.WUNTRACED)[1])
            return p
    else:
        def cli(*args, stop_at=None):
            return _cli(info, host_a, *args, stop_at=stop_at)
    writer = cli("backup", str(d4), stop_at="backup-checked")
    os.kill(writer.pid, signal.SIGTERM)
    code, out, err = _resume(writer)
    assert code == 143 and err == "chunkrepo: error: terminated\n"
    if where == "local":
        assert (tmp_path / "local" / "lock").read_bytes() == b""    # no holder left behind
    else:
        with _open(info, monkeypatch, tmp_path / "fresh") as repo:
            assert read_lock(repo.repository.storage) is None
    again = cli("backup", str(d4))
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0 and b"taking over" not in err, err.decode()
