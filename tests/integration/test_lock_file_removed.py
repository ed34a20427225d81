"""A local writer whose REPO/lock is removed or replaced while it works (docs/format.md, Locking).

Its flock stays on the old file, so the next writer creates a new `lock` and gets in.
The writer is a `chunkrepo` subprocess that SIGSTOPs itself at a named point
(CHUNKREPO_STOP_AT, repository/crash_points.py); meanwhile the test removes its lock
file, as someone clearing "stale lock files" would, and another writer runs.
"""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from chunkrepo import Repo
from chunkrepo.repository.config import Config
from chunkrepo.repository.lock import WriterLock
from tests.conftest import age, write_random

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(repo, *args, stop_at=None):
    env = {k: v for k, v in os.environ.items() if k not in ("CHUNKREPO_STOP_AT", "CHUNKREPO_CRASH_AT")}
    env["PYTHONPATH"] = ROOT
    if stop_at:
        env["CHUNKREPO_STOP_AT"] = stop_at
    p = subprocess.Popen([sys.executable, "-m", "chunkrepo", *args, "--repo", str(repo)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if stop_at:
        _, status = os.waitpid(p.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            pytest.fail(f"the writer ended before {stop_at}: {p.stderr.read().decode()}")
    else:
        out, err = p.communicate(timeout=120)
        return p.returncode, out.decode(), err.decode()
    return p


def _resume(p):
    os.kill(p.pid, signal.SIGCONT)
    out, err = p.communicate(timeout=120)
    return p.returncode, out.decode(), err.decode()


@pytest.fixture
def setup(tmp_path):
    """(repository, P1's id, d4): P1 held d3/u and is forgotten (its chunks are garbage,
    still stored); d4/a0 is a copy of it, so a backup of d4 reuses those chunks."""
    d3, d4 = tmp_path / "d3", tmp_path / "d4"
    d3.mkdir()
    d4.mkdir()
    write_random(d3 / "u", 3 << 20, seed=3)
    shutil.copy(d3 / "u", d4 / "a0")
    age(d3 / "u")
    age(d4 / "a0")
    path = tmp_path / "repo"
    with Repo.init(path) as repo:
        p1 = repo.backup([d3]).id
    return path, p1, d4


def test_a_backup_whose_lock_file_was_removed_stops_before_its_record(setup):
    """The tester's case: rm REPO/lock lets prune in, which frees the garbage chunks the
    stopped backup deduplicated against; that backup must not commit its record."""
    path, p1, d4 = setup
    assert _cli(path, "forget", p1)[0] == 0
    writer = _cli(path, "backup", str(d4), stop_at="backup-flushed")
    os.unlink(path / "lock")
    code, out, err = _cli(path, "prune")
    assert code == 0 and "3 packs deleted" in out, (out, err)
    code, out, err = _resume(writer)
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err == f"chunkrepo: error: lost the repository lock ({path}/lock was replaced); " \
                  f"nothing more was committed\n"
    assert os.listdir(path / "backups") == []
    with Repo(path) as repo:
        report = repo.check(read_data=True)
        assert report.ok, report.errors
        repo.backup([d4])          # the next writer works as always
        assert repo.check(read_data=True).ok


def test_a_record_stored_after_the_lock_file_went_is_reported(setup):
    """Removed between the check and the record's write (the window a check leaves): the
    prune freed what the writer stored, whose record cannot be registered; the writer
    says why, not "no root record"."""
    path, p1, d4 = setup
    assert _cli(path, "forget", p1)[0] == 0
    writer = _cli(path, "backup", str(d4), stop_at="backup-checked")
    os.unlink(path / "lock")
    assert _cli(path, "prune")[0] == 0
    code, out, err = _resume(writer)
    bid = os.listdir(path / "backups")
    assert code == 1 and len(bid) == 1 and err.count("\n") == 1, err
    assert err.startswith(f"chunkrepo: error: lost the repository lock ({path}/lock was replaced); "
                          f"backup {bid[0]} was stored while it was lost") and "run 'chunkrepo check'" in err


def test_a_blob_lost_at_a_registration_says_so(tmp_path):
    """A record put back into backups/ (as the advice for a damaged one says) after prune
    freed some of its chunks: the next write session's recovery registers it with those
    chunks lost.  The message must not claim check --repair or rebuild-index found them."""
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    write_random(d / "big", 3 << 20, seed=1)
    write_random(d / "sub" / "keep", 50_000, seed=2)
    for f in (d / "big", d / "sub" / "keep", d / "sub"):
        age(f)
    path = tmp_path / "repo"
    with Repo.init(path, Config(pack_size=1 << 20)) as repo:     # big's chunks in packs of their own
        p1 = repo.backup([d]).id
        # keeps the record of d/sub, and with it the pack holding P1's records
        repo.backup([d / "sub"])
        record = (path / "backups" / p1).read_bytes()
        repo.forget([p1])
        assert repo.prune(repack_threshold=0.99).packs_deleted >= 1     # big's chunks
    (path / "backups" / p1).write_bytes(record)
    assert _cli(path, "backup", str(d / "sub"))[0] == 0     # a write session: its recovery registers P1
    code, out, err = _cli(path, "restore", p1, str(d / "big"), "--target", str(tmp_path / "t"))
    assert code == 1 and "was lost: its only stored copy was found damaged or missing (by check --repair, or " \
                         "when a backup naming it was registered: by rebuild-index, by a write session's " \
                         "recovery, or by a writer that lost its lock)" in err, err


def test_a_prune_whose_lock_file_was_replaced_deletes_no_pack_file(setup):
    """Stopped after dropping P1's packs from the index, before deleting their files; the
    lock file is replaced and another writer holds the new one: the prune stops, naming it."""
    path, p1, _ = setup
    pruner = _cli(path, "forget", p1, "--prune", stop_at="prune-index-committed")
    with Repo(path) as repo, repo.repository.index.read() as v:
        pending = [pid for pid, _, _ in v.pending()]
    assert pending
    os.unlink(path / "lock")
    with WriterLock(str(path / "lock")):
        code, out, err = _resume(pruner)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"chunkrepo: error: lost the repository lock ({path}/lock was replaced: now held "
                          f"by PID {os.getpid()} on ")
    assert all((path / "packs" / pid.hex()[:2] / pid.hex()).exists() for pid in pending)
    code, out, err = _cli(path, "prune")     # the next prune deletes them
    assert code == 0 and not any((path / "packs" / pid.hex()[:2] / pid.hex()).exists() for pid in pending)
    with Repo(path) as repo:
        assert repo.check(read_data=True).ok


def test_a_writer_whose_lock_file_was_replaced_while_it_took_the_lock_locks_the_new_one(setup):
    """Stopped between opening REPO/lock and its flock; meanwhile the file is removed and
    another writer holds a new one: the flock on the old file must not let it in."""
    path, _, d4 = setup
    writer = _cli(path, "backup", str(d4), stop_at="lock-opened")
    os.unlink(path / "lock")
    with WriterLock(str(path / "lock")):
        code, out, err = _resume(writer)
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.startswith(f"chunkrepo: error: repository is locked by PID {os.getpid()} on ")
    with Repo(path) as repo:
        assert len(repo.list_backups()) == 1 and repo.check().ok
