"""Clones of a version as links into the read-only cache (gypsum's clone_version), edited and
snapshotted or backed up again: only the replaced files are read."""

import os
import subprocess
import sys

import blake3
import pytest

from chunkrepo import DirectorySnapshot, Repo
from chunkrepo.errors import ChunkrepoError
from tests.conftest import write_random

SIZES = {"a.bin": 1_500_000, "b.bin": 700_000, "sub/c.bin": 900_000}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKREPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CHUNKREPO_REPO", raising=False)
    ds = tmp_path / "dataset"
    for i, (rel, size) in enumerate(SIZES.items()):
        (ds / rel).parent.mkdir(parents=True, exist_ok=True)
        write_random(ds / rel, size, seed=i + 10)
    (ds / "notes").mkdir()
    os.symlink("a.bin", ds / "alias")
    repo = Repo.init(tmp_path / "repo")
    yield {"tmp": tmp_path, "ds": ds, "repo": repo, "cache": tmp_path / "cache"}
    repo.close()


def _content(root):
    out = {}
    for d, _dirs, files in os.walk(root):
        for n in files:
            p = os.path.join(d, n)
            if not os.path.islink(p) or os.path.exists(p):
                with open(p, "rb") as f:
                    out[os.path.relpath(p, root)] = f.read()
    return out


def test_clone_edit_one_file_snapshot_reads_only_that_file(env):
    r = env["repo"]
    first = r.snapshot(env["ds"])
    dest = env["tmp"] / "v2"
    res = r.clone(first.digest, dest)
    assert res.files == 3 and res.symlinks == 1 and res.dirs == 2
    for rel in SIZES:
        target = os.readlink(dest / rel)
        assert target.startswith(str(env["cache"] / "objects"))
        assert os.path.basename(target) == blake3.blake3((env["ds"] / rel).read_bytes()).hexdigest()
    assert _content(dest) == _content(env["ds"])
    assert os.readlink(dest / "alias") == "a.bin" and (dest / "notes").is_dir()
    # the editing contract: replace a link with a real file
    os.unlink(dest / "b.bin")
    (dest / "b.bin").write_bytes(b"new version of b")
    second = r.snapshot(dest)
    assert second.stats["bytes_read"] == len(b"new version of b")        # nothing else read
    assert second.stats["files_linked"] == 2
    assert second.digest != first.digest
    # the new version restores whole, from the repository alone
    v2 = DirectorySnapshot.from_digest(second.digest, repo=r.path)
    got = _content(v2.restore_safe())
    assert got["b.bin"] == b"new version of b" and got["a.bin"] == (env["ds"] / "a.bin").read_bytes()
    # and a backup of the clone reads only the edited file too
    b = r.backup([dest])
    assert b.bytes_read == len(b"new version of b") and b.files_borrowed == 2
    restored = env["tmp"] / "restored"
    r.restore(b.id, restored, str(dest))
    assert _content(restored / "v2") == _content(dest)
    assert not os.path.islink(restored / "v2" / "a.bin")          # stored as content, not as a link
    assert r.check(read_data=True).ok


def test_no_download_clone_dangles_and_still_makes_a_new_version(env):
    r = env["repo"]
    first = r.snapshot(env["ds"])
    dest = env["tmp"] / "wo"
    res = r.clone(first.digest, dest, download=False)
    assert res.dangling == 3 and res.objects_written == 0
    assert (dest / "a.bin").is_symlink() and not (dest / "a.bin").exists()
    assert not (env["cache"] / "objects").exists()
    (dest / "sub" / "c.bin").unlink()
    (dest / "sub" / "c.bin").write_bytes(b"C2")
    second = r.snapshot(dest)
    assert second.stats["bytes_read"] == 2
    got = _content(DirectorySnapshot.from_digest(second.digest, repo=r.path).restore_safe())
    assert got["sub/c.bin"] == b"C2" and got["a.bin"] == (env["ds"] / "a.bin").read_bytes()
    with pytest.raises(ChunkrepoError):
        r.clone(first.digest, env["tmp"] / "x", mode="copy", download=False)


def test_reclone_allowed_real_files_never_silently_replaced(env):
    r = env["repo"]
    first = r.snapshot(env["ds"])
    dest = env["tmp"] / "c"
    r.clone(first.digest, dest)
    again = r.clone(first.digest, dest)                # over an existing clone
    assert again.kept == 4 and again.replaced == 0    # 3 files + 1 symlink
    os.unlink(dest / "a.bin")
    (dest / "a.bin").write_bytes(b"my edit")
    with pytest.raises(FileExistsError, match="a.bin"):
        r.clone(first.digest, dest)
    assert (dest / "a.bin").read_bytes() == b"my edit"   # untouched
    # a real file with the very content is fine (a copy-mode clone cloned again)
    cdest = env["tmp"] / "copies"
    r.clone(first.digest, cdest, mode="copy")
    assert not (cdest / "a.bin").is_symlink() and os.access(cdest / "a.bin", os.W_OK)
    assert r.clone(first.digest, cdest, mode="copy").kept == 4


def test_clone_modes_and_clone_of_a_backup_path(env):
    r = env["repo"]
    b = r.backup([env["ds"]])
    hard = env["tmp"] / "hard"
    res = r.clone(b.id, hard, str(env["ds"]), mode="hardlink")
    f = hard / "dataset" / "a.bin"
    digest = blake3.blake3((env["ds"] / "a.bin").read_bytes()).hexdigest()
    obj = env["cache"] / "objects" / digest[:2] / digest
    assert res.mode == "hardlink" and os.stat(f).st_ino == os.stat(obj).st_ino
    assert _content(hard / "dataset") == _content(env["ds"])
    ref = env["tmp"] / "ref"
    res = r.clone(b.id, ref, str(env["ds"] / "sub"), mode="reflink")   # falls back to copy where unsupported
    assert (ref / "sub" / "c.bin").read_bytes() == (env["ds"] / "sub" / "c.bin").read_bytes()
    assert not (ref / "sub" / "c.bin").is_symlink()
    # a clone of a backup, edited, backed up: only the edited file is read
    sym = env["tmp"] / "sym"
    r.clone(b.id, sym, str(env["ds"]))
    os.unlink(sym / "dataset" / "b.bin")
    (sym / "dataset" / "b.bin").write_bytes(b"bb")
    b2 = r.backup([sym])
    assert b2.bytes_read == 2


def test_cli_clone(env, tmp_path):
    r = env["repo"]
    first = r.snapshot(env["ds"])
    e = dict(os.environ, CHUNKREPO_REPO=r.path)
    p = subprocess.run([sys.executable, "-m", "chunkrepo", "clone", first.digest, str(tmp_path / "cl")],
                       capture_output=True, text=True, env=e)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(tmp_path / "cl") and "3 files (symlink)" in p.stderr
    assert (tmp_path / "cl" / "sub" / "c.bin").read_bytes() == (env["ds"] / "sub" / "c.bin").read_bytes()
    p = subprocess.run([sys.executable, "-m", "chunkrepo", "clone", "--no-download", first.digest,
                        str(tmp_path / "cl2")], capture_output=True, text=True,
                       env=dict(e, CHUNKREPO_CACHE_DIR=str(tmp_path / "empty-cache")))
    assert p.returncode == 0 and "dangle" in p.stderr
    (tmp_path / "cl" / "a.bin").unlink()
    (tmp_path / "cl" / "a.bin").write_bytes(b"x")
    p = subprocess.run([sys.executable, "-m", "chunkrepo", "clone", first.digest, str(tmp_path / "cl")],
                       capture_output=True, text=True, env=e)
    assert p.returncode == 1 and p.stderr.startswith("chunkrepo: error:") and p.stderr.count("\n") == 1
    p = subprocess.run([sys.executable, "-m", "chunkrepo", "snapshot", str(tmp_path / "cl")],
                       capture_output=True, text=True, env=e)
    assert p.returncode == 0 and "read 1 B" in p.stderr
