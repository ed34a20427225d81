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


def test_lock_left_by_another_host_is_reported_with_its_age_until_unlocked(tmp_path):
    path = tmp_path / "repo"
    Repo.init(path).close()
    (path / "lock").write_text(json.dumps({"pid": 4242, "host": "otherhost.example",
                                           "since": "2020-01-01T00:00:00+00:00"}))
    with Repo(path) as repo:
        with pytest.raises(RepoLocked) as exc:
            with repo.repository.write_session():
                pass
    msg = str(exc.value)
    assert "PID 4242 on otherhost.example (another host) since 2020-01-01" in msg, msg
    assert " days ago)" in msg and "chunkrepo unlock" in msg and "\n" not in msg
    p = _cli("unlock", "--repo", str(path))
    assert p.returncode == 0, p.stderr
    assert "otherhost.example (another host)" in p.stderr.decode()
    with Repo(path) as repo:
        with repo.repository.write_session():
            assert json.loads((path / "lock").read_text())["pid"] == os.getpid()


def test_killed_writer_on_this_host_is_taken_over_with_a_message(tmp_path, caplog):
    import signal
    import socket
    import time
    path = tmp_path / "repo"
    Repo.init(path).close()
    code = ("import sys, time\nfrom chunkrepo import Repo\n"
            "with Repo(sys.argv[1]) as r, r.repository.write_session():\n"
            "    print('held', flush=True)\n    time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"held\n"
        info = json.loads((path / "lock").read_text())
        assert info["pid"] == child.pid and info["host"] == socket.gethostname()
        p = _cli("unlock", "--repo", str(path))           # a live holder: not removed
        assert p.returncode == 1 and "still running" in p.stderr.decode()
        assert json.loads((path / "lock").read_text())["pid"] == child.pid
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    stale = (path / "lock").read_text()
    assert json.loads(stale)["pid"] == child.pid          # stale info stays behind
    p = _cli("unlock", "--repo", str(path))
    assert p.returncode == 0 and f"PID {child.pid}" in p.stderr.decode() and "gone" in p.stderr.decode()
    assert (path / "lock").read_text() == ""
    (path / "lock").write_text(stale)                     # and without unlock: taken over
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="chunkrepo"):
        with Repo(path) as repo, repo.repository.write_session():
            pass
    assert time.monotonic() - t0 < 5
    assert f"taking over the lock of PID {child.pid} on {socket.gethostname()}" in caplog.text
    assert (path / "lock").read_text() == ""                             # released cleanly
