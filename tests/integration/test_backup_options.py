"""--one-file-system and the progress line (terminal only)."""

import os
import pty
import subprocess
import sys

import pytest

from tests.conftest import write_random


def _mount_tmpfs(path):
    os.makedirs(path)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {p.stderr.decode().strip()}")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_one_file_system_records_mountpoint_empty(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "here.txt").write_text("x")
    mnt = src / "mnt"
    _mount_tmpfs(mnt)
    try:
        (mnt / "inside.txt").write_text("y")
        crossing = repo.backup([src])
        staying = repo.backup([src], one_file_system=True)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    names = {os.path.basename(e.path) for e in repo.list_backup(crossing.id)}
    assert b"inside.txt" in names
    names = {os.path.basename(e.path) for e in repo.list_backup(staying.id)}
    assert b"mnt" in names and b"inside.txt" not in names and b"here.txt" in names


def _backup_stderr(tmp_path, src, tty):
    repo = tmp_path / ("repo-tty" if tty else "repo-pipe")
    subprocess.run([sys.executable, "-m", "chunkrepo", "init", "--repo", str(repo)], check=True,
                   capture_output=True)
    cmd = [sys.executable, "-m", "chunkrepo", "backup", "--repo", str(repo), str(src)]
    if not tty:
        return subprocess.run(cmd, capture_output=True).stderr.decode()
    master, slave = pty.openpty()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    p.wait()
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_progress_only_on_a_terminal(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        write_random(src / f"f{i}", 2 << 20, seed=i)
    on_tty = _backup_stderr(tmp_path, src, tty=True)
    piped = _backup_stderr(tmp_path, src, tty=False)
    assert "\r" in on_tty and "files" in on_tty and "B/s" in on_tty
    assert "\r" not in piped and "B/s" not in piped
