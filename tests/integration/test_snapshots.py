"""FileSnapshot / DirectorySnapshot / restore(digest): the rules of the HitSave seed documents,
on real files and real repositories (docs/snapshots.md)."""

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings

import blake3
import pytest

from chunkrepo import DirectorySnapshot, FileSnapshot, Repo, restore
from chunkrepo.errors import NotFound, TargetNotEmpty
from tests.conftest import age, write_random


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A workspace (pyproject.toml), a repository and a cache of our own."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CHUNKREPO_CACHE_DIR", str(cache))
    monkeypatch.delenv("CHUNKREPO_REPO", raising=False)
    ws = tmp_path / "proj"
    ws.mkdir()
    (ws / "pyproject.toml").write_text("[project]\nname='p'\n")
    repo = tmp_path / "repo"
    Repo.init(repo).close()
    monkeypatch.chdir(ws)
    return {"ws": ws, "repo": str(repo), "cache": cache, "tmp": tmp_path}


def b3(path) -> str:
    with open(path, "rb") as f:
        return blake3.blake3(f.read()).hexdigest()


def tree_state(root):
    """Every path below root with its type, size and link target."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), st.st_size,
                                             os.readlink(p) if stat.S_ISLNK(st.st_mode) else None)
    return out


# -- FileSnapshot ---------------------------------------------------------------------
def test_round_trip_and_digest_is_blake3_of_the_file(env):
    (env["ws"] / "data").mkdir()
    f = write_random(env["ws"] / "data" / "w.bin", 3_000_000, seed=1)
    original = f.read_bytes()
    s = FileSnapshot.snap(f, repo=env["repo"])
    assert s.digest == blake3.blake3(original).hexdigest()
    if shutil.which("b3sum"):
        assert subprocess.run(["b3sum", "--no-names", str(f)], capture_output=True,
                              text=True).stdout.strip() == s.digest
    assert (s.name, s.suffix, s.content_length) == ("w.bin", ".bin", len(original))
    assert str(s.relpath) == "data/w.bin"
    f.write_bytes(b"changed")                       # the snapshot does not follow the file
    again = FileSnapshot.from_digest(s.digest, repo=env["repo"])
    assert again.digest == s.digest and again.content_length == len(original)
    assert not again.has_local_cache
    with again.open() as fh:
        assert fh.read() == original
    assert again.has_local_cache
    p = again.restore_safe()
    assert p.read_bytes() == original and b3(p) == s.digest


def test_restore_safe_writes_nothing_else_and_is_read_only(env):
    f = env["ws"] / "a.txt"
    f.write_text("A")
    s = FileSnapshot.snap(f, repo=env["repo"])
    before = tree_state(env["tmp"])
    p = s.restore_safe()
    after = tree_state(env["tmp"])
    added = set(after) - set(before)
    assert all(a == "cache" or a.startswith("cache" + os.sep) for a in added), added
    assert {k: v for k, v in after.items() if not k.startswith("cache")} == \
        {k: v for k, v in before.items() if not k.startswith("cache")}
    assert str(p).startswith(str(env["cache"])) and p.name == s.digest
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o444
    assert p.read_text() == "A"


def test_restore_at_overwrite_modes(env):
    f = env["ws"] / "hello.txt"
    f.write_text("A")
    snap_a = FileSnapshot.snap(f, repo=env["repo"])
    f.unlink()
    f.write_text("B")
    # None: warns and replaces (with a symlink into the cache)
    with pytest.warns(UserWarning, match="already exists"):
        out = snap_a.restore_at(f)
    assert out == f and f.is_symlink() and f.read_text() == "A"
    assert os.readlink(f) == str(env["cache"] / "objects" / snap_a.digest[:2] / snap_a.digest)
    # restoring onto its own link is a no-op, even with overwrite=False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert snap_a.restore_at(f, overwrite=False) == f
    # False: FileExistsError, nothing changed
    g = env["ws"] / "other.txt"
    g.write_text("B")
    with pytest.raises(FileExistsError):
        snap_a.restore_at(g, overwrite=False)
    assert g.read_text() == "B" and not g.is_symlink()
    # True: replaced without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        snap_a.restore_at(g, overwrite=True)
    assert g.read_text() == "A"
    # anything else: TypeError
    with pytest.raises(TypeError):
        snap_a.restore_at(g, overwrite="yes")
    with pytest.raises(TypeError):
        snap_a.restore(overwrite=1)


def test_restore_at_extension_mismatch_and_directory_target(env):
    f = env["ws"] / "model.pt"
    f.write_bytes(b"weights")
    s = FileSnapshot.snap(f, repo=env["repo"])
    with pytest.raises(ValueError, match="extension"):
        s.restore_at(env["ws"] / "model.txt")
    assert not (env["ws"] / "model.txt").exists()
    target = env["tmp"] / "elsewhere"
    target.mkdir()
    out = s.restore_at(target)
    assert out == target / "model.pt" and out.read_bytes() == b"weights"
    # copy / hardlink modes where a symlink does not suit
    c = s.restore_at(env["tmp"] / "copy.pt", mode="copy")
    assert not c.is_symlink() and c.read_bytes() == b"weights" and os.stat(c).st_mode & 0o200
    h = s.restore_at(env["tmp"] / "hard.pt", mode="hardlink")
    assert os.stat(h).st_ino == os.stat(s.restore_safe()).st_ino


def test_restore_to_relpath_and_workspace_detection(env):
    d = env["ws"] / "out"
    d.mkdir()
    f = d / "r.csv"
    f.write_text("1,2\n")
    s = FileSnapshot.snap(f, repo=env["repo"])
    assert str(s.relpath) == "out/r.csv"
    f.unlink()
    assert s.restore() == env["ws"] / "out" / "r.csv"
    assert f.read_text() == "1,2\n"
    other = env["tmp"] / "proj2"
    other.mkdir()
    assert s.restore(project_path=other).read_text() == "1,2\n"
    assert (other / "out" / "r.csv").is_symlink()
    # a git root is the workspace when there is no pyproject.toml
    g = env["tmp"] / "gitrepo"
    (g / ".git").mkdir(parents=True)
    (g / "sub").mkdir()
    (g / "sub" / "x.txt").write_text("x")
    assert str(FileSnapshot.snap(g / "sub" / "x.txt", repo=env["repo"]).relpath) == "sub/x.txt"
    # outside any workspace: no relpath, and restore() says so
    lone = env["tmp"] / "lone"
    lone.mkdir()
    (lone / "y.txt").write_text("y")
    sy = FileSnapshot.snap(lone / "y.txt", repo=env["repo"])
    assert sy.relpath is None
    with pytest.raises(ValueError):
        sy.restore()
    # an explicit workspace_dir wins
    assert str(FileSnapshot.snap(lone / "y.txt", workspace_dir=env["tmp"], repo=env["repo"]).relpath) \
        == os.path.join("lone", "y.txt")


def test_unknown_digest_is_file_not_found(env):
    FileSnapshot.snap(_file(env["ws"] / "k.txt", "k"), repo=env["repo"])
    missing = blake3.blake3(b"never stored").hexdigest()
    with pytest.raises(FileNotFoundError):
        restore(missing, repo=env["repo"])
    with pytest.raises(FileNotFoundError):
        FileSnapshot.from_digest(missing, repo=env["repo"])
    with pytest.raises(FileNotFoundError):
        DirectorySnapshot.from_digest(missing, repo=env["repo"])
    with pytest.raises(FileNotFoundError):
        restore("not-hex", repo=env["repo"])


def test_resnapshot_of_a_restored_file_keeps_its_identity_without_reading(env):
    f = _file(env["ws"] / "h.txt", "hello")
    s = FileSnapshot.snap(f, repo=env["repo"])
    f.unlink()
    s.restore()
    assert f.is_symlink()
    with Repo(env["repo"]) as r:
        res = r.snapshot(f)
    assert res.digest == s.digest and res.stats["bytes_read"] == 0
    assert FileSnapshot.snap(f, repo=env["repo"]).digest == s.digest


def test_repository_from_env_and_default_repository(env, monkeypatch, tmp_path):
    f = _file(env["ws"] / "e.txt", "env")
    monkeypatch.setenv("CHUNKREPO_REPO", env["repo"])
    s = FileSnapshot.snap(f)                     # $CHUNKREPO_REPO, resolved at call time
    assert restore(s.digest).read_text() == "env"
    monkeypatch.delenv("CHUNKREPO_REPO")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    s2 = FileSnapshot.snap(f)                    # the default repository, created on first use
    assert (tmp_path / "xdg" / "chunkrepo" / "repo" / "config").exists()
    assert FileSnapshot.from_digest(s2.digest).open().read() == b"env"


# -- DirectorySnapshot ----------------------------------------------------------------
def _file(p, text):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def _dataset(root):
    _file(root / "a.txt", "alpha")
    _file(root / "sub" / "b.txt", "beta")
    write_random(root / "sub" / "big.bin", 2_500_000, seed=7)
    (root / "empty").mkdir()
    os.symlink("a.txt", root / "link")
    os.symlink("/etc/hostname", root / "outside")
    return root


def test_directory_digest_covers_names_modes_types_and_empty_dirs(env):
    ds = _dataset(env["ws"] / "ds")
    d0 = DirectorySnapshot.snap(ds, repo=env["repo"]).digest
    assert DirectorySnapshot.snap(ds, repo=env["repo"]).digest == d0          # stable
    moved = env["tmp"] / "moved"
    shutil.copytree(ds, moved, symlinks=True)
    assert DirectorySnapshot.snap(moved, repo=env["repo"]).digest == d0       # not where it lives
    os.rename(ds / "a.txt", ds / "a2.txt")
    d1 = DirectorySnapshot.snap(ds, repo=env["repo"]).digest
    assert d1 != d0                                                            # rename
    os.rename(ds / "a2.txt", ds / "a.txt")
    assert DirectorySnapshot.snap(ds, repo=env["repo"]).digest == d0
    m0 = stat.S_IMODE(os.stat(ds / "a.txt").st_mode)
    os.chmod(ds / "a.txt", 0o600)
    assert DirectorySnapshot.snap(ds, repo=env["repo"]).digest not in (d0, d1)   # chmod
    os.chmod(ds / "a.txt", m0)
    assert DirectorySnapshot.snap(ds, repo=env["repo"]).digest == d0
    os.rmdir(ds / "empty")
    assert DirectorySnapshot.snap(ds, repo=env["repo"]).digest != d0          # empty dir counted
    (ds / "empty").mkdir()
    os.unlink(ds / "link")
    _file(ds / "link", "a.txt")                                                # symlink -> file
    assert DirectorySnapshot.snap(ds, repo=env["repo"]).digest != d0


def test_directory_snapshot_restore_safe_and_files(env):
    ds = _dataset(env["ws"] / "ds")
    snap = DirectorySnapshot.snap(ds, repo=env["repo"])
    assert str(snap.relpath) == "ds" and snap.original_path == ds
    names = sorted(str(f.relpath) for f in snap.files)
    assert names == ["ds/a.txt", "ds/sub/b.txt", "ds/sub/big.bin"]
    big = next(f for f in snap.files if f.name == "big.bin")
    assert big.digest == b3(ds / "sub" / "big.bin")
    again = DirectorySnapshot.from_digest(snap.digest, repo=env["repo"])
    assert again.digest == snap.digest and sorted(f.digest for f in again.files) == \
        sorted(f.digest for f in snap.files)
    p = again.restore_safe()
    assert (p / "a.txt").read_text() == "alpha" and (p / "sub" / "b.txt").read_text() == "beta"
    assert (p / "sub" / "big.bin").read_bytes() == (ds / "sub" / "big.bin").read_bytes()
    assert (p / "empty").is_dir() and not any((p / "empty").iterdir())
    assert os.readlink(p / "link") == "a.txt" and os.readlink(p / "outside") == "/etc/hostname"
    assert restore(snap.digest, repo=env["repo"]) == p
    # the tree in the cache is checked, not trusted: tampering is repaired, but a file it
    # did not put there is never deleted (test_snapshot_fixes2.py has the details)
    os.chmod(p, 0o755)
    os.unlink(p / "a.txt")
    os.symlink("/etc/hostname", p / "a.txt")
    (p / "intruder").write_text("x")
    with pytest.raises(TargetNotEmpty, match="intruder"):
        again.restore_safe()
    (p / "intruder").unlink()
    assert again.restore_safe() == p
    assert (p / "a.txt").read_text() == "alpha"
    # a file of a directory snapshot is a snapshot by its own digest
    assert FileSnapshot.from_digest(big.digest, repo=env["repo"]).open().read() == \
        (ds / "sub" / "big.bin").read_bytes()


def test_directory_restore_at_merges_and_restore_uses_relpath(env):
    ds = _dataset(env["ws"] / "ds")
    snap = DirectorySnapshot.snap(ds, repo=env["repo"])
    target = env["tmp"] / "t"
    _file(target / "extra.txt", "mine")
    _file(target / "a.txt", "old")
    with pytest.raises(FileExistsError):
        snap.restore_at(target, overwrite=False)
    assert (target / "a.txt").read_text() == "old" and not (target / "sub").exists()
    assert snap.restore_at(target) == target
    assert (target / "extra.txt").read_text() == "mine"           # extra files left alone
    assert (target / "a.txt").read_text() == "alpha" and (target / "sub" / "b.txt").read_text() == "beta"
    shutil.rmtree(ds)
    assert snap.restore() == env["ws"] / "ds"
    assert (ds / "sub" / "big.bin").stat().st_size == 2_500_000 and (ds / "empty").is_dir()
    # snapshotting the restored tree: links into the cache are not read, identity is kept
    # for the files (same digests); modes of links count as 0644 (docs/snapshots.md)
    with Repo(env["repo"]) as r:
        res = r.snapshot(ds)
    assert res.stats["bytes_read"] == 0 and res.stats["files_linked"] == 3
    assert res.digest == snap.digest


def test_second_process_resolves_a_digest_with_the_same_repository(env, tmp_path):
    ds = _dataset(env["ws"] / "ds")
    snap = DirectorySnapshot.snap(ds, repo=env["repo"])
    fsnap = FileSnapshot.snap(ds / "a.txt", repo=env["repo"])
    code = textwrap.dedent(f"""
        import os, sys
        from chunkrepo import DirectorySnapshot, FileSnapshot
        p = DirectorySnapshot.from_digest({snap.digest!r}).restore_safe()
        print(p)
        print(open(os.path.join(p, "sub", "b.txt")).read())
        print(FileSnapshot.from_digest({fsnap.digest!r}).open().read().decode())
    """)
    e = dict(os.environ, CHUNKREPO_REPO=env["repo"], CHUNKREPO_CACHE_DIR=str(tmp_path / "other-cache"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, cwd="/")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(tmp_path / "other-cache")) and lines[1:] == ["beta", "alpha"]


def test_unchanged_directory_resnapshot_reads_nothing(env):
    ds = _dataset(env["ws"] / "ds")
    for p in (ds / "a.txt", ds / "sub" / "b.txt", ds / "sub" / "big.bin"):
        age(p)
    with Repo(env["repo"]) as r:
        first = r.snapshot(ds)
        second = r.snapshot(ds)
        assert first.stats["bytes_read"] == 2_500_000 + 9
        assert second.digest == first.digest and second.stats["bytes_read"] == 0
        _file(ds / "a.txt", "ALPHA")
        third = r.snapshot(ds)
        assert third.stats["bytes_read"] == 5 and third.digest != first.digest


def test_snapshots_are_ordinary_repository_citizens(env):
    ds = _dataset(env["ws"] / "ds")
    snap = DirectorySnapshot.snap(ds, repo=env["repo"])
    with Repo(env["repo"]) as r:
        recs = [x for x in r.list_backups() if x.kind == "snapshot"]
        assert len(recs) == 1 and recs[0].snapshot["digest"] == snap.digest
        assert r.check(read_data=True).ok
        names = {e.path for e in r.list_backup(recs[0].id)}
        assert os.fsencode(str(ds / "sub" / "big.bin")).lstrip(b"/") in names
        if hasattr(r, "forget"):
            r.forget([recs[0].id], prune=True)
            assert r.check().ok
    if hasattr(Repo, "forget"):
        with pytest.raises(FileNotFoundError):
            DirectorySnapshot.from_digest(snap.digest, repo=env["repo"])


def test_latest_names_the_newest_backup_not_a_later_snapshot(env):
    ds = _dataset(env["ws"] / "ds")
    DirectorySnapshot.snap(ds, repo=env["repo"])
    with Repo(env["repo"]) as r:
        with pytest.raises(NotFound, match="no backups yet"):
            r.get_backup("latest")                        # a snapshot is not a backup
        bid = r.backup([str(ds / "sub")]).id
    FileSnapshot.snap(ds / "a.txt", repo=env["repo"])    # newer than the backup
    with Repo(env["repo"]) as r:
        assert r.list_backups()[-1].kind == "snapshot"
        assert r.get_backup("latest").id == bid
        names = {e.path for e in r.list_backup("latest")}
        assert os.fsencode(str(ds / "sub" / "b.txt")).lstrip(b"/") in names
        assert not any(n.endswith(b".chunkrepo-manifest") for n in names)


# -- CLI ------------------------------------------------------------------------------
def cli(*args, env_extra=None, cwd=None):
    e = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "chunkrepo", *args], capture_output=True, text=True,
                          env=e, cwd=cwd)


def test_cli_snapshot_restore_and_cache(env):
    ds = _dataset(env["ws"] / "ds")
    e = {"CHUNKREPO_REPO": env["repo"]}
    p = cli("snapshot", str(ds / "a.txt"), env_extra=e)
    assert p.returncode == 0, p.stderr
    fd = p.stdout.strip()
    assert fd == b3(ds / "a.txt")
    p = cli("snapshot", str(ds), env_extra=e)
    dd = p.stdout.strip()
    assert p.returncode == 0 and len(dd) == 64
    out = env["tmp"] / "out"
    out.mkdir()
    p = cli("snapshot", "--restore", fd, str(out), env_extra=e)
    assert p.returncode == 0, p.stderr
    assert (out / "a.txt").read_text() == "alpha" and (out / "a.txt").is_symlink()
    p = cli("snapshot", "--restore", dd, str(env["tmp"] / "dsout"), env_extra=e)
    assert p.returncode == 0, p.stderr
    assert (env["tmp"] / "dsout" / "sub" / "b.txt").read_text() == "beta"
    p = cli("snapshot", "--restore", dd[:12], str(env["tmp"] / "dsout2"), "--mode", "copy", env_extra=e)
    assert p.returncode == 0, p.stderr
    assert not (env["tmp"] / "dsout2" / "a.txt").is_symlink()
    p = cli("snapshot", "--restore", "ab" * 32, str(out), env_extra=e)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "no snapshot" in p.stderr
    p = cli("snapshot", "--restore", fd, str(env["tmp"] / "x.bin"), env_extra=e)
    assert p.returncode == 1 and "extension" in p.stderr
    assert cli("cache", "path").stdout.strip() == str(env["cache"])
    p = cli("cache", "size", "--json")
    assert '"objects": 3' in p.stdout
    p = cli("cache", "clear")
    assert p.returncode == 0 and "3 objects" in p.stdout and "restored links now dangle" in p.stdout
    assert int(p.stdout.split(";")[1].split()[0]) == 1 + 3      # out/a.txt + dsout's three files
    assert (out / "a.txt").is_symlink() and not (out / "a.txt").exists()
    assert cli("cache", "size", "--json").stdout.count('"objects": 0') == 1
