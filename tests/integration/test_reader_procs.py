"""Reader processes (ops/backup/reader_procs): what they store is what reader threads
store, every chunk once, and neither a file changing under them, a reader dying nor a
kill of the backup costs the repository anything."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from chunkrepo import Repo

CLI = [sys.executable, "-m", "chunkrepo"]


def _tree(root, big=4 << 20):
    """Small files (some identical), a few multi-chunk files (two identical), a sparse
    file, an empty file, a hard link and xattrs."""
    rnd = __import__("random").Random(7)
    (root / "small").mkdir(parents=True)
    for i in range(600):
        data = rnd.randbytes(rnd.randrange(1, 6000)) if i % 5 else b"same content %d\n" % (i % 3)
        (root / "small" / f"f{i:04d}").write_bytes(data)
    blob = rnd.randbytes(big)
    (root / "big1").write_bytes(blob)
    (root / "big2").write_bytes(blob)                      # the same chunks again
    (root / "big3").write_bytes(blob[:big // 2] + rnd.randbytes(big))
    with open(root / "sparse", "wb") as f:
        f.seek(50 << 20)
        f.write(b"tail")
    (root / "empty").write_bytes(b"")
    os.link(root / "big3", root / "big3.link")
    os.setxattr(root / "small" / "f0001", "user.test", b"value")


def _manifest(root):
    out = {}
    for d, _, files in os.walk(root):
        for n in files:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_reader_processes_store_each_chunk_once_and_restore_exactly(tmp_path):
    src = tmp_path / "src"
    _tree(src)
    by_procs = Repo.init(str(tmp_path / "p"))
    by_threads = Repo.init(str(tmp_path / "t"))
    rp = by_procs.backup([src], processes_after=0)
    rt = by_threads.backup([src], processes_after=None)
    assert rp.reader_processes == 2 and rt.reader_processes == 0
    assert rp.errors == [] and rp.files == rt.files and rp.bytes_total == rt.bytes_total
    # the same chunks, each stored once: the same new bytes, and no copy left as garbage
    assert rp.bytes_new == rt.bytes_new < rp.bytes_read
    with by_procs._repo.index.read() as v:
        assert v.garbage_count() == 0
        chunks_p = {k for k, _ in v.all_chunks()}
    with by_threads._repo.index.read() as v:
        assert chunks_p == {k for k, _ in v.all_chunks()}
    assert by_procs.check(read_data=True).ok
    out = tmp_path / "out"
    by_procs.restore(rp.id, out)
    restored = out / str(src).lstrip("/")
    assert _manifest(restored) == _manifest(src)
    assert os.getxattr(restored / "small" / "f0001", "user.test") == b"value"
    assert os.stat(restored / "big3").st_ino == os.stat(restored / "big3.link").st_ino
    assert os.stat(restored / "sparse").st_blocks * 512 < (1 << 20)
    # a second backup with processes: only what changed is read, the rest deduplicates
    (src / "big4").write_bytes((src / "big1").read_bytes() + b"x")
    r2 = by_procs.backup([src], processes_after=0)
    assert r2.reader_processes == 2 and r2.errors == []
    assert r2.bytes_new < 4 << 20      # big4 is big1 and one byte: its chunks but the last are in the index
    assert by_procs.check(read_data=True).ok


def test_a_file_rewritten_while_a_reader_process_reads_it_is_not_stored_torn(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    target = src / "hot.bin"
    versions = set()
    size = 24 << 20
    data = bytes(size)
    target.write_bytes(data)
    versions.add(hashlib.sha256(data).digest())
    stop = threading.Event()

    def writer():
        v = 1
        while not stop.is_set():
            block = v.to_bytes(8, "little") * (1 << 17)          # 1 MiB
            with open(target, "r+b") as f:
                for off in range(0, size, 1 << 20):
                    f.write(block)
            versions.add(hashlib.sha256(block * (size >> 20)).digest())
            v += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.05)
        repo = Repo.init(str(tmp_path / "r"))
        res = repo.backup([src], processes_after=0)
    finally:
        stop.set()
        t.join()
    assert res.reader_processes == 2
    names = {e.path for e in repo.list_backup(res.id)}
    if os.fsencode(str(target)).lstrip(b"/") in names:
        with repo.open_file(res.id, target) as f:
            assert hashlib.sha256(f.read()).digest() in versions, "stored torn"
    else:
        assert res.files_changed_during_backup == 1
        assert any("changed during the backup" in e for e in res.errors)
    assert repo.check().ok


def _readers_of(pid):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"reader_main" in cmd and str(pid).encode() in cmd.split(b"\0"):
            out.append(int(p))
    return out


def _wait_gone(pids, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"
                   for p in pids):
            return True
        time.sleep(0.05)
    return False


def _env(**kw):
    env = dict(os.environ)
    env.update(kw)
    return env


def _big_tree(root):
    """Enough to read for the reader processes to start at once (64 MiB in the first
    files of the walk), then many small files."""
    _tree(root / "b", big=24 << 20)
    rnd = __import__("random").Random(3)
    (root / "a").mkdir()
    (root / "a" / "first").write_bytes(rnd.randbytes(40 << 20))


def _start_backup(tmp_path):
    src = tmp_path / "src"
    _big_tree(src)
    repo = str(tmp_path / "r")
    subprocess.run(CLI + ["init", "--repo", repo], check=True, capture_output=True)
    p = subprocess.Popen(CLI + ["backup", "--repo", repo, str(src)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    readers = []
    while p.poll() is None and len(readers) < 2:
        readers = _readers_of(p.pid)
        time.sleep(0.01)
    assert len(readers) == 2, "the backup ended before its reader processes were seen"
    return p, readers, repo, src


def _still_sound(repo, src):
    """The next backup recovers what the failed one left, and everything checks."""
    r = subprocess.run(CLI + ["backup", "--repo", repo, str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    c = subprocess.run(CLI + ["check", "--repo", repo, "--read-data"], capture_output=True, text=True)
    assert c.returncode == 0, c.stdout + c.stderr


def test_a_killed_backup_takes_its_reader_processes_with_it(tmp_path):
    p, readers, repo, src = _start_backup(tmp_path)
    p.kill()                      # kill -9 of the backup
    p.wait()
    assert _wait_gone(readers), "reader processes outlived the backup"
    _still_sound(repo, src)


def test_a_reader_process_that_dies_fails_the_backup_in_one_line(tmp_path):
    p, readers, repo, src = _start_backup(tmp_path)
    os.kill(readers[0], signal.SIGKILL)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "chunkrepo: error: a reader process ended unexpectedly (killed by signal 9)"], err
    assert _wait_gone(readers)
    listed = subprocess.run(CLI + ["list-backups", "--repo", repo], capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.strip() == ""
    _still_sound(repo, src)


def test_a_reader_sees_an_idle_reader_in_the_busy_map(tmp_path):
    """The map the readers share is a real mmap: a reader with no batch counts as idle."""
    import mmap
    from chunkrepo.ops.backup.reader_procs import others_busy
    p = tmp_path / "busy"
    p.write_bytes(bytes(3))
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), 3)
    m[0], m[1], m[2] = 1, 0, 2
    assert not others_busy(m, 0)        # reader 1 is idle: reader 0 may take help
    assert others_busy(m, 1)
    m[1] = 5
    assert others_busy(m, 0)
    m.close()
