"""Progress lines of restore, tar and check: on a terminal only, fed by the operations' callbacks."""

import io
import os
import pty
import subprocess
import sys

from chunkrepo.ops.restore import restore_tree
from chunkrepo.ops.tarout import write_tar
from tests.conftest import write_random


def _stderr(cmd, tty: bool):
    """Run cmd; return (exit code, what it wrote on stderr), stderr being a pty or a pipe."""
    if not tty:
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return p.returncode, p.stderr.decode(errors="replace")
    master, slave = pty.openpty()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:     # EIO: the child closed its side
            break
        if not data:
            break
        chunks.append(data)
    code = p.wait()
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def _src(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(12):
        write_random(src / f"f{i}", 1 << 20, seed=i)
    for i in range(50):
        (src / "sub" / f"s{i}").write_bytes(b"small %d\n" % i)
    return src


def _cli(repo, *args):
    return [sys.executable, "-m", "chunkrepo", *args[:1], "--repo", str(repo.path), *args[1:]]


def test_restore_progress_only_on_a_terminal(repo, tmp_path):
    src = _src(tmp_path)
    bid = repo.backup([src]).id
    code, on_tty = _stderr(_cli(repo, "restore", bid, "--target", str(tmp_path / "tty")), tty=True)
    assert code == 0, on_tty
    assert "\r" in on_tty and "restore" in on_tty and "B/s" in on_tty
    assert "62 files" in on_tty            # the last counts are shown before the line is cleared
    code, piped = _stderr(_cli(repo, "restore", bid, "--target", str(tmp_path / "pipe")), tty=False)
    assert code == 0, piped
    assert piped == ""
    for t in ("tty", "pipe"):
        got = tmp_path / t / str(src).lstrip("/")
        assert (got / "f3").read_bytes() == (src / "f3").read_bytes()
        assert len(os.listdir(got / "sub")) == 50


def test_tar_and_check_progress_only_on_a_terminal(repo, tmp_path):
    src = _src(tmp_path)
    bid = repo.backup([src]).id
    out = tmp_path / "a.tar"
    code, on_tty = _stderr(_cli(repo, "tar", bid, "-o", str(out)), tty=True)
    assert code == 0, on_tty
    assert "\r" in on_tty and "tar" in on_tty and "62 files" in on_tty
    size = out.stat().st_size
    out.unlink()
    code, piped = _stderr(_cli(repo, "tar", bid, "-o", str(out)), tty=False)
    assert code == 0 and piped == "" and out.stat().st_size == size
    code, on_tty = _stderr(_cli(repo, "check", "--read-data"), tty=True)
    assert code == 0, on_tty
    assert "\r" in on_tty and "check" in on_tty and "no errors were found" in on_tty
    code, piped = _stderr(_cli(repo, "check"), tty=False)
    assert code == 0 and "\r" not in piped and piped.strip() == "no errors were found"


def test_restore_and_tar_callbacks_count_up_to_the_totals(repo, tmp_path):
    src = _src(tmp_path)
    rec = repo.get_backup(repo.backup([src]).id)
    root = bytes.fromhex(rec.root)
    seen = []
    res = restore_tree(repo.repository, root, tmp_path / "out", progress=lambda r: seen.append(
        (r.files, r.bytes_written)))
    assert res.errors == [] and res.files == 62
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert seen and seen[-1] == (62, total) == (res.files, res.bytes_written)
    assert all(a <= b for a, b in zip(seen, seen[1:]))
    stats_seen = []
    stats = write_tar(repo.repository, root, io.BytesIO(), progress=stats_seen.append)
    assert stats_seen and stats_seen[-1]["content_bytes"] == stats["content_bytes"] == total
    assert stats_seen[-1]["files"] == 62
