"""Files that change under the backup: never stored torn, replaced and vanished files
detected, unreadable files and sockets skipped and counted."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

from chunkrepo import Repo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 30 << 20


def _version(v: int) -> bytes:
    # distinct content per version, cheap to make: a 1 MiB random block repeated
    # with the version number stamped into every 4 KiB
    import random
    block = bytearray(random.Random(v).randbytes(1 << 20))
    for off in range(0, len(block), 4096):
        block[off:off + 8] = v.to_bytes(8, "little")
    return bytes(block) * (SIZE >> 20)


@pytest.mark.parametrize("pause", [0.01, 0.3])
def test_file_rewritten_during_the_backup_is_never_stored_torn(repo, tmp_path, pause):
    """pause between rewrites: short, the file never holds still (reported as changed);
    long, a retry can read a quiet version (stored, and it must be a whole one)."""
    src = tmp_path / "src"
    src.mkdir()
    target = src / "hot.bin"
    versions = {}
    data = _version(0)
    target.write_bytes(data)
    versions[hashlib.sha256(data).digest()] = 0
    stop = threading.Event()
    started = threading.Event()
    rewrites = [0]

    def writer():
        v = 1
        while not stop.is_set():
            data = _version(v)
            digest = hashlib.sha256(data).digest()
            with open(target, "r+b") as f:       # in place: readers see a mix while it runs
                for off in range(0, SIZE, 1 << 20):
                    f.write(data[off:off + (1 << 20)])
                    started.set()
                    if stop.is_set():
                        return
            versions[digest] = v                  # complete: a version that existed
            rewrites[0] += 1
            v += 1
            stop.wait(pause)

    t = threading.Thread(target=writer)
    t.start()
    try:
        started.wait(10)
        res = repo.backup([src])
    finally:
        stop.set()
        t.join()
    assert rewrites[0] >= 1, "the writer never finished a version during the backup"
    names = {e.path for e in repo.list_backup(res.id)}
    stored = os.fsencode(str(target)).lstrip(b"/") in names
    if stored:
        with repo.open_file(res.id, target) as f:
            digest = hashlib.sha256(f.read()).digest()
        assert digest in versions, "stored content is torn: it matches no complete version"
    else:
        assert res.files_changed_during_backup == 1
        assert any("changed during the backup" in e for e in res.errors)
        assert res.bytes_read >= SIZE and res.files == 0 and res.bytes_total == 0   # read, not held
    assert repo.check().ok
    # quiet again: the next backup stores it, byte-identical
    res2 = repo.backup([src])
    assert res2.files_changed_during_backup == 0 and res2.errors == []
    with repo.open_file(res2.id, target) as f:
        assert f.read() == target.read_bytes()


def _inject_on_first_progress(action):
    """A progress callback that performs action once, after the first directory was
    walked and before its files (still in the open batch) were opened."""
    done = []

    def progress(res):
        if not done:
            done.append(1)
            action()
    return progress, done


def test_replaced_vanished_and_retyped_files_between_walk_and_open(repo, tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "replaced.txt").write_bytes(b"old content\n")
    (src / "a" / "vanishing.txt").write_bytes(b"soon gone\n")
    (src / "a" / "to_symlink.txt").write_bytes(b"will become a symlink\n")
    (src / "a" / "steady.txt").write_bytes(b"steady\n")
    (src / "z.txt").write_bytes(b"last\n")
    old_ino = os.lstat(src / "a" / "replaced.txt").st_ino
    new_content = b"a different file with a different length\n" * 3

    def race():
        tmp = src / "a" / ".new"
        tmp.write_bytes(new_content)
        os.rename(tmp, src / "a" / "replaced.txt")      # another inode under the same name
        os.unlink(src / "a" / "vanishing.txt")
        os.unlink(src / "a" / "to_symlink.txt")
        os.symlink("/etc/passwd", src / "a" / "to_symlink.txt")

    progress, fired = _inject_on_first_progress(race)
    res = repo.backup([src], progress=progress)
    assert fired, "the progress hook never ran"
    new_ino = os.lstat(src / "a" / "replaced.txt").st_ino
    assert new_ino != old_ino
    # the replaced file: the open handle is checked against the walk's lstat, the
    # mismatch is seen, and what is stored is the new file with its own metadata
    node = next(iter(repo.list_backup(res.id, src / "a" / "replaced.txt"))).node
    assert node.ino == new_ino and node.size == len(new_content)
    with repo.open_file(res.id, src / "a" / "replaced.txt") as f:
        assert f.read() == new_content
    # vanished: skipped with a message; turned into a symlink after the walk:
    # O_NOFOLLOW refuses it (ELOOP): a change during the backup, never followed
    assert res.skipped == 1 and res.files_changed_during_backup == 1, res.errors
    assert any("vanishing.txt" in e and "vanished" in e for e in res.errors)
    assert any("to_symlink.txt" in e and "changed during the backup" in e for e in res.errors)
    assert len(res.errors) == 2
    names = {e.path for e in repo.list_backup(res.id, src)}
    prefix = os.fsencode(str(src)).lstrip(b"/")
    assert prefix + b"/a/vanishing.txt" not in names
    assert prefix + b"/a/to_symlink.txt" not in names
    assert prefix + b"/a/steady.txt" in names and prefix + b"/z.txt" in names
    # the counts are those of what the backup holds: not the vanished file nor the one that
    # became a symlink, and the replaced file with the size of what was stored
    assert res.files == 3 and res.bytes_total == len(new_content) + len(b"steady\n") + len(b"last\n")
    assert repo.check(read_data=True).ok


def test_socket_is_skipped_and_counted(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"x")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(src / "sock"))
        res = repo.backup([src])
    finally:
        s.close()
    assert res.skipped == 1
    assert any("sock" in e and "socket" in e for e in res.errors)
    names = {e.path for e in repo.list_backup(res.id, src)}
    assert os.fsencode(str(src / "f.txt")).lstrip(b"/") in names
    assert os.fsencode(str(src / "sock")).lstrip(b"/") not in names


# Run as nobody: the interpreter lives below /root (mode 700), so the child starts
# as root, imports everything (a warm-up backup), then drops to nobody in-process.
CHILD = r"""
import json, os, sys, tempfile
from chunkrepo import Repo
import concurrent.futures.thread
warm = tempfile.mkdtemp()
os.makedirs(warm + "/s")
open(warm + "/s/f", "wb").write(b"warm up every import")
with Repo.init(warm + "/r") as r:
    r.backup([warm + "/s"]); r.check(read_data=True)
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
base, src = sys.argv[1], sys.argv[2]
with Repo.init(base + "/repo") as r:
    res = r.backup([src])
print(json.dumps(res.to_dict()))
"""

# diff of a backup against a live tree a part of which cannot be listed: exit 1
CHILD_DIFF = r"""
import os, sys
from chunkrepo.cli.main import main
repo, src = sys.argv[1], sys.argv[2]
sys.argv = ["chunkrepo", "diff", "--repo", repo, "latest", src]
try:
    main()                          # as root: imports everything, no error
except SystemExit as e:
    assert not e.code, e.code
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
main()
"""


def test_unreadable_file_and_directory_as_non_root():
    base = tempfile.mkdtemp(prefix="chunkrepo-eacces-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        os.chown(base, 65534, 65534)
        src = os.path.join(base, "src")
        os.makedirs(os.path.join(src, "locked_dir"))
        with open(os.path.join(src, "locked_dir", "inside"), "wb") as f:
            f.write(b"unseen")
        with open(os.path.join(src, "ok.txt"), "wb") as f:
            f.write(b"readable\n")
        with open(os.path.join(src, "secret.txt"), "wb") as f:
            f.write(b"no access\n")
        os.chmod(src, 0o755)
        os.chmod(os.path.join(src, "secret.txt"), 0o000)
        os.chmod(os.path.join(src, "locked_dir"), 0o000)
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(src, "sock"))
        try:
            p = subprocess.run([sys.executable, "-c", CHILD, base, src], capture_output=True,
                               env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
        finally:
            s.close()
        if p.returncode != 0 and b"Operation not permitted" in p.stderr:
            pytest.skip("cannot drop privileges here")
        assert p.returncode == 0, p.stderr.decode()[-2000:]
        res = json.loads(p.stdout.decode().strip().splitlines()[-1])
        assert res["skipped"] == 3, res["errors"]
        assert res["files"] == 1 and res["bytes_total"] == len(b"readable\n")   # what the backup holds
        errs = "\n".join(res["errors"])
        assert "secret.txt: Permission denied" in errs
        assert "locked_dir: cannot list directory: Permission denied" in errs
        assert "sock: is a socket: skipped" in errs
        with Repo(os.path.join(base, "repo")) as repo:
            names = {e.path for e in repo.list_backup(res["id"])}
            rel = os.fsencode(src).lstrip(b"/")
            assert rel + b"/ok.txt" in names and rel + b"/secret.txt" not in names
            assert rel + b"/locked_dir" in names and rel + b"/locked_dir/inside" not in names
            with repo.open_file(res["id"], os.path.join(src, "ok.txt")) as f:
                assert f.read() == b"readable\n"
            assert repo.check(read_data=True).ok
        p = subprocess.run([sys.executable, "-c", CHILD_DIFF, os.path.join(base, "repo"), src],
                           capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
        assert p.returncode == 1, p.stderr.decode()[-2000:]
        assert b"locked_dir: cannot list directory: Permission denied" in p.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)
