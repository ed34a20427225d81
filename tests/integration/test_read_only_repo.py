"""A repository this process cannot write (a read-only mount, no write permission) is
read by the commands that only read; commands that write fail with one line; a reader
without write access and a writer exclude each other (repository.lock.ReaderLock)."""

import os
import shutil
import subprocess
import sys

import pytest

from chunkrepo.errors import RepoLocked
from chunkrepo.repository.lock import WriterLock
from tests.conftest import age, sha256_tree, write_random

READ_ONLY_ERROR = "chunkrepo: error: cannot write the repository"


def run(*args, prefix=(), **kw):
    p = subprocess.run([*prefix, sys.executable, "-m", "chunkrepo", *args], capture_output=True, **kw)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


@pytest.fixture
def backed_up(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i, name in enumerate(("d/one", "d/two", "three")):
        write_random(src / name, 30_000 + 10_000 * i, seed=i)
        age(src / name)
    repo = tmp_path / "repo"
    assert run("init", "--repo", str(repo))[0] == 0
    rc, out, err = run("backup", "--repo", str(repo), str(src))
    assert rc == 0, err
    return repo, src


def _chmod_tree(root, write: bool):
    for dirpath, dirs, files in os.walk(root):
        for p in [dirpath] + [os.path.join(dirpath, f) for f in files]:
            mode = os.stat(p).st_mode
            os.chmod(p, mode | 0o200 if write else mode & ~0o222)


def without_write_access(probe_dir):
    """The argv prefix that runs a command unable to write probe_dir (mode a-w): none for
    a user other than root; for root, setpriv dropping CAP_DAC_OVERRIDE (uid 0 stays, so
    the interpreter and the tests' files stay readable).  Skips where that is not possible."""
    if os.geteuid() != 0:
        prefix = ()
    elif shutil.which("setpriv") is None:
        pytest.skip("as root, this test drops CAP_DAC_OVERRIDE with setpriv (util-linux), not installed")
    else:
        prefix = ("setpriv", "--bounding-set=-dac_override")
    p = subprocess.run([*prefix, sys.executable, "-c", f"import os, sys; sys.exit(os.access({str(probe_dir)!r}, "
                                                       f"os.W_OK, effective_ids=True))"], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot run a process without write access here: {p.stderr.decode().strip()}")
    return prefix


def _reads_and_refuses_writes(repo, src, out_dir, prefix=()):
    r = str(repo)
    rc, out, err = run("list-backups", "--repo", r, prefix=prefix)
    assert rc == 0 and str(src) in out, err
    rc, out, err = run("ls", "latest", "--repo", r, prefix=prefix)
    assert rc == 0 and "d/two" in out, err
    rc, out, err = run("check", "--read-data", "--repo", r, prefix=prefix)
    assert rc == 0 and "no errors were found" in err, err
    rc, out, err = run("diff", "latest", "latest", "--repo", r, prefix=prefix)
    assert rc == 0, err
    rc, out, err = run("tar", "latest", "-o", str(out_dir / "b.tar"), "--repo", r, prefix=prefix)
    assert rc == 0, err
    listed = subprocess.run(["tar", "-tf", str(out_dir / "b.tar")], capture_output=True, text=True, check=True)
    assert any(line.endswith("d/one") for line in listed.stdout.splitlines())
    rc, out, err = run("restore", "latest", "--target", str(out_dir / "restored"), "--repo", r, prefix=prefix)
    assert rc == 0, err
    restored = out_dir / "restored" / str(src).lstrip("/")
    assert {os.path.relpath(p, restored): h for p, h in sha256_tree(restored).items()} == \
        {os.path.relpath(p, src): h for p, h in sha256_tree(src).items()}
    for args in (("backup", str(src)), ("forget", "latest"), ("prune",), ("check", "--repair"),
                 ("rebuild-index",), ("unlock",)):
        rc, out, err = run(*args, "--repo", r, prefix=prefix)
        assert rc == 1 and err.strip().splitlines()[-1].startswith(READ_ONLY_ERROR), (args, err)
        assert "Traceback" not in err


def test_unwritable_repository(backed_up, tmp_path):
    repo, src = backed_up
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    _chmod_tree(repo, write=False)
    try:
        _reads_and_refuses_writes(repo, src, out_dir, without_write_access(repo))
    finally:
        _chmod_tree(repo, write=True)


def test_read_only_mount(backed_up, tmp_path):
    repo, src = backed_up
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (test_unwritable_repository covers other users)")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    p = subprocess.run(["mount", "--bind", str(repo), str(mnt)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {p.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], check=True, capture_output=True)
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        _reads_and_refuses_writes(mnt, src, out_dir)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# A reader that cannot write the index: it opens the repository, says so, and waits for a line.
READER = r"""
import sys
from chunkrepo import Repo
with Repo(sys.argv[1]) as r:
    print(r.repository.read_only is not None, len(r.list_backups()), flush=True)
    sys.stdin.readline()
"""


def test_reader_without_write_access_and_writer_exclude_each_other(backed_up):
    repo, src = backed_up
    _chmod_tree(repo / "index", write=False)        # REPO/lock stays writable for the writer
    try:
        prefix = without_write_access(repo / "index")
        with WriterLock(str(repo / "lock")):
            rc, out, err = run("ls", "latest", "--repo", str(repo), prefix=prefix)
        assert rc == 1 and "repository is locked by PID" in err and "no writer runs" in err, err
        child = subprocess.Popen([*prefix, sys.executable, "-c", READER, str(repo)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().split() == ["True", "1"]
            with pytest.raises(RepoLocked, match="a reader that cannot write the repository"):
                WriterLock(str(repo / "lock")).acquire()
        finally:
            child.communicate("\n")
        assert child.returncode == 0
        with WriterLock(str(repo / "lock")):          # free again once the reader is gone
            pass
    finally:
        _chmod_tree(repo / "index", write=True)
