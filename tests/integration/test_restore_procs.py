"""Restore processes (ops/restore_procs): a process that dies fails the restore in one
line, and a killed restore takes its processes with it.  (What they write is checked
against the threads by test_restore.py's WRITERS tests.)"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from chunkrepo import Repo
from chunkrepo.errors import StorageError

CLI = [sys.executable, "-m", "chunkrepo"]


def _children(pid: int) -> list:
    """Restore processes whose parent is pid."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"restore_procs" in cmd:
            out.append(int(d))
    return out


def _wait_for(fn, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(0.002)
    return None


@pytest.fixture(scope="module")
def many_files(tmp_path_factory):
    """A backup of 8,000 small files: long enough a restore to kill something in it."""
    root = tmp_path_factory.mktemp("many")
    src = root / "src"
    for d in range(40):
        (src / f"d{d:02d}").mkdir(parents=True)
        for i in range(200):
            (src / f"d{d:02d}" / f"f{i:03d}").write_bytes(b"%d/%d " % (d, i) * 300)
    repo = Repo.init(root / "repo")
    bid = repo.backup([src]).id
    repo.close()
    return root, bid


def test_a_restore_process_that_dies_fails_the_restore_in_one_line(many_files, tmp_path):
    root, bid = many_files
    box: dict = {}

    def run():
        with Repo(root / "repo") as repo:
            try:
                box["res"] = repo.restore(bid, tmp_path / "out", processes_after=0)
            except BaseException as e:      # noqa: BLE001 (the test looks at it)
                box["err"] = e

    t = threading.Thread(target=run)
    t.start()
    kids = _wait_for(lambda: _children(os.getpid()))
    assert kids, "no restore process started"
    # (killed before the restore has sent it its parameters, a process is one that could
    # not start: the threads write on, rightly; the restore sends them at once)
    time.sleep(0.05)
    os.kill(kids[0], signal.SIGKILL)
    t.join(60)
    assert not t.is_alive()
    err = box.get("err")
    assert isinstance(err, StorageError), box
    assert str(err) == "a restore process ended unexpectedly (killed by signal 9)"
    assert _wait_for(lambda: not _children(os.getpid()), 10)      # the other one ended too


def test_a_killed_restore_takes_its_processes_with_it(many_files, tmp_path):
    root, bid = many_files
    p = subprocess.Popen(CLI + ["restore", "--repo", str(root / "repo"), bid, "--target", str(tmp_path / "out")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        kids = _wait_for(lambda: _children(p.pid) if p.poll() is None else [-1])
        assert kids and kids != [-1], "the restore ended before its processes started"
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        gone = _wait_for(lambda: all(not os.path.exists(f"/proc/{k}") or _zombie(k) for k in kids), 10)
        assert gone, f"restore processes {kids} outlived the restore"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_small_restore_keeps_to_threads_and_a_large_one_starts_processes(many_files, tmp_path):
    root, bid = many_files
    with Repo(root / "repo") as repo:
        small = repo.restore(bid, tmp_path / "small", str(root / "src" / "d00"))
        large = repo.restore(bid, tmp_path / "large")
        off = repo.restore(bid, tmp_path / "off", processes_after=None)
    assert small.processes == 0 and large.processes == 2 and off.processes == 0
    assert small.files == 200 and large.files == off.files == 8000
    assert large.errors == small.errors == off.errors == []
    want = (root / "src" / "d17" / "f123").read_bytes()
    got = tmp_path / "large" / os.path.relpath(root / "src" / "d17" / "f123", "/")
    assert got.read_bytes() == want
