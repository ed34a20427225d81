"""The lock message says how old the lock is; unlock never breaks a live lock."""

import json
import os
import subprocess
import sys

import pytest

from chunkrepo import Repo
from chunkrepo.errors import RepoLocked


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "chunkrepo", *args], capture_output=True)


def test_held_lock_names_its_age_and_unlock_refuses(tmp_path):
    path = tmp_path / "repo"
    Repo.init(path).close()
    with Repo(path) as repo:
        with repo.repository.write_session():
            with Repo(path) as other, pytest.raises(RepoLocked, match=r"since .* ago\)"):
                with other.repository.write_session():
                    pass
            p = _cli("unlock", "--repo", str(path))
            assert p.returncode != 0 and "still running" in p.stderr.decode()
            assert json.loads((path / "lock").read_text())["pid"] == os.getpid()


def test_unlock_clears_what_a_dead_writer_left(tmp_path):
    path = tmp_path / "repo"
    Repo.init(path).close()
    (path / "lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere",
                                           "since": "2026-01-01T00:00:00+00:00"}))
    p = _cli("unlock", "--repo", str(path))
    assert p.returncode == 0 and "PID 999999 on elsewhere" in p.stderr.decode()
    assert (path / "lock").read_text() == ""
    p = _cli("unlock", "--repo", str(path))
    assert p.returncode == 0 and "not locked" in p.stderr.decode()
    with Repo(path) as repo:          # and a writer takes it as usual
        with repo.repository.write_session():
            pass
