"""One writer at a time; readers never wait; a killed writer's lock is free at once."""

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from chunkrepo import Repo
from chunkrepo.errors import RepoLocked
from tests.conftest import write_random

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A backup that stops in its progress callback (the lock held, the walk under way)
# until the parent writes a line to its stdin.
CHILD = r"""
import sys
from chunkrepo import Repo
held = []
def progress(res):
    if not held:
        held.append(1)
        print("running", flush=True)
        sys.stdin.readline()
with Repo(sys.argv[1]) as r:
    res = r.backup([sys.argv[2]], progress=progress)
print(res.id, flush=True)
"""


@pytest.fixture
def setup(tmp_path):
    first_src = tmp_path / "first"
    first_src.mkdir()
    write_random(first_src / "a.bin", 2 << 20, seed=1)
    (first_src / "t.txt").write_text("text\n" * 100)
    src = tmp_path / "second"
    (src / "d").mkdir(parents=True)
    for i in range(4):
        write_random(src / "d" / f"{i}.bin", 3 << 20, seed=10 + i)
    repo_path = tmp_path / "repo"
    with Repo.init(repo_path) as repo:
        first = repo.backup([first_src])
    return repo_path, first_src, first.id, src


def _start(repo_path, src):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(repo_path), str(src)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=dict(os.environ, PYTHONPATH=ROOT))
    line = child.stdout.readline()
    assert line == b"running\n", child.stderr.read().decode()[-2000:]
    return child


def _read_everything(repo, backup_id, src):
    assert backup_id in [r.id for r in repo.list_backups()]
    paths = [e.path for e in repo.list_backup(backup_id, src)]
    assert len(paths) == 3
    for name in ("a.bin", "t.txt"):
        with repo.open_file(backup_id, src / name) as f:
            assert f.read() == (src / name).read_bytes()


def test_second_writer_is_refused_while_readers_keep_working(setup):
    repo_path, first_src, first_id, src = setup
    child = _start(repo_path, src)
    try:
        with Repo(repo_path) as repo:
            with pytest.raises(RepoLocked) as exc:
                repo.backup([first_src])
            msg = str(exc.value)
            m = re.search(r"locked by PID (\d+) on (\S+) since (\S+)", msg)
            assert m, msg
            assert int(m.group(1)) == child.pid and m.group(2) == socket.gethostname()
            assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", m.group(3))
            assert "\n" not in msg
            _read_everything(repo, first_id, first_src)      # the writer is paused mid-backup
            assert repo.check().ok
            child.stdin.write(b"go\n")
            child.stdin.flush()
            rounds = 0
            while child.poll() is None or rounds == 0:        # and while it writes
                _read_everything(repo, first_id, first_src)
                rounds += 1
            out, err = child.communicate()
            assert child.returncode == 0, err.decode()[-2000:]
            new_id = out.decode().split()[-1]
            # the lock is free again; the second writer now succeeds
            res = repo.backup([first_src])
            assert res.errors == [] and res.bytes_new == 0
            assert {new_id, first_id, res.id} <= {r.id for r in repo.list_backups()}
            with repo.open_file(new_id, src / "d" / "2.bin") as f:
                assert hashlib.sha256(f.read()).digest() == \
                    hashlib.sha256((src / "d" / "2.bin").read_bytes()).digest()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_killed_writers_lock_is_free_immediately(setup):
    repo_path, first_src, first_id, src = setup
    child = _start(repo_path, src)
    with Repo(repo_path) as repo:
        with pytest.raises(RepoLocked):
            repo.backup([first_src])
        child.send_signal(signal.SIGKILL)
        child.wait()
        t0 = time.monotonic()
        res = repo.backup([src])        # no waiting, no stale-lock cleanup needed
        assert time.monotonic() - t0 < 10
        assert res.errors == []
        rep = repo.check(read_data=True)
        assert rep.ok, rep.errors
        _read_everything(repo, first_id, first_src)
        with repo.open_file(res.id, src / "d" / "0.bin") as f:
            assert f.read() == (src / "d" / "0.bin").read_bytes()
