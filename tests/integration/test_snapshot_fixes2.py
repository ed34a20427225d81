"""Restores and clones of snapshots: manifests from a shared repository are not trusted
(UnsafePath before anything is written), restore_safe trees are read-only and never lose a
file they did not place, copy and hardlink placements re-snapshot to the same digest, a
trailing slash means "into this directory", and the clone reports say what was done."""

import fcntl
import json
import os
import stat
import subprocess
import sys

import pytest

from chunkrepo import DirectorySnapshot, FileSnapshot, Repo
from chunkrepo.errors import TargetNotEmpty, UnsafePath
from chunkrepo.ops.check import check_repository
from chunkrepo.ops.snapshot import manifest as mf
from chunkrepo.ops.snapshot.place import FICLONE


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKREPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CHUNKREPO_REPO", raising=False)
    repo = tmp_path / "repo"
    Repo.init(repo).close()
    return {"tmp": tmp_path, "repo": str(repo), "cache": tmp_path / "cache"}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "chunkrepo", *args], capture_output=True, text=True)


def _dataset(root):
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "x.txt").write_text("ex")
    return root


def _tree(root):
    """Every path below root (or below a directory) with its type and content/target."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[p] = ("l", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[p] = ("d", stat.S_IMODE(st.st_mode))
            else:
                out[p] = ("f", open(p, "rb").read())
    return out


# -- #1: crafted manifests -----------------------------------------------------------
def forge(env, src, edit):
    """A real snapshot of src whose stored manifest is edit(entries): what a damaged or
    hostile shared repository holds (its digest is consistent, so nothing else notices)."""
    real = mf.encode
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mf, "encode", lambda entries: real(edit(list(entries))))
        return DirectorySnapshot.snap(src, repo=env["repo"]).digest


def _victim(env):
    v = env["tmp"] / "victim"
    (v / "lair").mkdir(parents=True)
    (v / "important.txt").write_text("precious")
    return v


ATTACKS = {
    "dotdot": lambda v: lambda es: es + [(b"../important.txt", "l", 0, 0, b"/dev/null"),
                                         (b"../escaped_dir", "d", 0o755, 0, b"")],
    "deep_dotdot": lambda v: lambda es: es + [(b"sub/../../../../../../../../../../../" +
                                               os.fsencode(v).lstrip(b"/") + b"/escaped_dir", "d", 0o755, 0, b"")],
    "absolute": lambda v: lambda es: es + [(os.fsencode(v / "escaped_dir"), "d", 0o755, 0, b"")],
    # "sub" becomes a symlink to the victim's directory; the stored file sub/x.txt then lands there
    "through_symlink": lambda v: lambda es: [e for e in es if e[0] != b"sub"] +
                                            [(b"sub", "l", 0, 0, os.fsencode(v / "lair"))],
    "empty_component": lambda v: lambda es: es + [(b"sub//escaped_dir", "d", 0o755, 0, b"")],
    "nul": lambda v: lambda es: es + [(b"esc\0aped", "d", 0o755, 0, b"")],
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_crafted_manifest_is_refused_before_anything_is_written(env, attack):
    v = _victim(env)
    src = _dataset(env["tmp"] / "src")
    digest = forge(env, src, ATTACKS[attack](v))
    before = _tree(v)
    target = v / "target"
    ws = env["tmp"] / "ws"

    def via_restore():
        ds = DirectorySnapshot.from_digest(digest, repo=env["repo"])
        ds.relpath = "target"
        return ds.restore(workspace_dir=v)

    ops = {
        "restore_at": lambda: DirectorySnapshot.from_digest(digest, repo=env["repo"]).restore_at(target),
        "restore_at copy": lambda: DirectorySnapshot.from_digest(digest, repo=env["repo"]).restore_at(
            target, mode="copy"),
        "restore": via_restore,
        "restore_safe": lambda: DirectorySnapshot.from_digest(digest, repo=env["repo"]).restore_safe(),
        "clone": lambda: Repo(env["repo"]).clone(digest, target),
    }
    for name, op in ops.items():
        with pytest.raises(UnsafePath, match="unsafe path"):
            op()
        assert _tree(v) == before, name           # nothing outside (nor the target itself) written
        assert not os.path.lexists(env["cache"] / "dirs" / digest), name
    assert not ws.exists()
    p = cli("snapshot", "--repo", env["repo"], "--restore", digest, str(target))
    assert p.returncode == 1 and p.stderr.startswith("chunkrepo: error: snapshot ")
    assert "unsafe path" in p.stderr and p.stderr.count("\n") == 1
    assert _tree(v) == before
    # check names the manifest as damage
    with Repo(env["repo"]) as r:
        rep = check_repository(r.repository)
    assert not rep.ok and any("unsafe path" in e and digest[:12] in e for e in rep.errors), rep.errors


def test_clone_of_a_crafted_backup_is_refused(env):
    from tests.integration.test_restore import _commit_crafted, _dir, _file
    v = _victim(env)
    before = _tree(v)
    with Repo(env["repo"]) as r:
        bids = [_commit_crafted(r, lambda s: [_dir(s, b"a", [_dir(s, b"..", [_file(s, b"x", b"escaped")])])]),
                _commit_crafted(r, lambda s: [_file(s, b"a/../../victim/x", b"escaped")])]
        for bid in bids:
            with pytest.raises(UnsafePath, match=f"backup {bid}: unsafe path"):
                r.clone(bid, v / "target")
    assert _tree(v) == before


def test_unsafe_path_rules():
    ok = [(b"a", "d"), (b"a/b", "f"), (b"a/c", "l"), (b"d", "l")]
    assert mf.unsafe_path(ok) is None
    for bad in ([(b"/a", "d")], [(b"a/../b", "d")], [(b".", "d")], [(b"a//b", "d")], [(b"", "f")],
                [(b"a\0b", "f")], [(b"a", "d"), (b"a", "l")], [(b"a", "l"), (b"a/b", "f")],
                [(b"a/b", "f")], [(b"a", "x")]):
        assert mf.unsafe_path(bad) is not None, bad


def test_a_sound_manifest_is_not_damage(env):
    src = _dataset(env["tmp"] / "src")
    os.symlink("/etc/hostname", src / "abs_link")            # a link *to* an absolute path is fine
    os.symlink("../a.txt", src / "sub" / "up_link")
    d = DirectorySnapshot.snap(src, repo=env["repo"])
    out = d.restore_at(env["tmp"] / "out")
    assert os.readlink(out / "sub" / "up_link") == "../a.txt" and (out / "sub" / "up_link").read_text() == "alpha"
    with Repo(env["repo"]) as r:
        assert check_repository(r.repository).ok


# -- #3: restore_safe is read-only and keeps what it did not place ------------------------
def test_restore_safe_tree_is_read_only_and_foreign_files_are_refused_not_deleted(env):
    src = _dataset(env["tmp"] / "src")
    (src / "ro").mkdir(mode=0o700)
    ds = DirectorySnapshot.snap(src, repo=env["repo"])
    p = ds.restore_safe()
    modes = {q: stat.S_IMODE(os.lstat(q).st_mode) for q in (p, p / "sub", p / "ro")}
    assert set(modes.values()) == {0o555}, modes
    # a pipeline (root, or after a chmod) writes its output into the tree
    os.chmod(p / "sub", 0o755)
    (p / "sub" / "predictions.csv").write_text("results")
    with pytest.raises(TargetNotEmpty, match="predictions.csv"):
        ds.restore_safe()
    assert (p / "sub" / "predictions.csv").read_text() == "results"
    # a real file where a link was is somebody's data too
    os.unlink(p / "sub" / "predictions.csv")
    os.unlink(p / "sub" / "x.txt")
    (p / "sub" / "x.txt").write_text("edited")
    with pytest.raises(TargetNotEmpty, match="x.txt"):
        ds.restore_safe()
    assert (p / "sub" / "x.txt").read_text() == "edited"
    # moved away: the tree is rebuilt, read-only again
    os.unlink(p / "sub" / "x.txt")
    assert ds.restore_safe() == p
    assert (p / "sub" / "x.txt").read_text() == "ex" and os.path.islink(p / "sub" / "x.txt")
    assert stat.S_IMODE(os.lstat(p / "sub").st_mode) == 0o555
    # a mode set back by hand is made read-only again, without a rebuild
    os.chmod(p, 0o755)
    ino = os.lstat(p).st_ino
    assert ds.restore_safe() == p and stat.S_IMODE(os.lstat(p).st_mode) == 0o555 and os.lstat(p).st_ino == ino
    assert not os.listdir(env["cache"] / "tmp")
    p2 = cli("cache", "clear")
    assert p2.returncode == 0, p2.stderr
    assert not (env["cache"] / "dirs").exists()


# -- #5 / #6: copy keeps directory modes; hardlink clones re-snapshot to the same digest ---
def test_copy_restore_keeps_directory_modes_and_digest(env):
    src = env["tmp"] / "md"
    (src / "ro").mkdir(parents=True)
    (src / "x").mkdir()
    (src / "ro" / "a").write_text("1")
    (src / "x" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "x" / "run.sh", 0o755)
    os.chmod(src / "ro", 0o555)
    os.chmod(src / "x", 0o750)
    d = DirectorySnapshot.snap(src, repo=env["repo"])
    for mode in ("copy", "symlink"):
        out = DirectorySnapshot.from_digest(d.digest, repo=env["repo"]).restore_at(env["tmp"] / mode, mode=mode)
        assert stat.S_IMODE(os.stat(out / "ro").st_mode) == 0o555
        assert stat.S_IMODE(os.stat(out / "x").st_mode) == 0o750
    assert DirectorySnapshot.snap(env["tmp"] / "copy", repo=env["repo"]).digest == d.digest
    # restoring again over it replaces the files inside the 0555 directory (opened for the
    # time it takes, also without root) and leaves the directory's mode as it was
    (src / "ro" / "a").chmod(0o644)
    (src / "ro").chmod(0o755)
    (src / "ro" / "a").write_text("2")
    (src / "ro").chmod(0o555)
    d2 = DirectorySnapshot.snap(src, repo=env["repo"])
    out = d2.restore_at(env["tmp"] / "copy", mode="copy", overwrite=True)
    assert (out / "ro" / "a").read_text() == "2" and stat.S_IMODE(os.stat(out / "ro").st_mode) == 0o555


def test_every_clone_mode_re_snapshots_to_the_same_digest(env):
    src = _dataset(env["tmp"] / "src")
    (src / "dup1.txt").write_text("same")
    (src / "dup2.txt").write_text("same")
    d = DirectorySnapshot.snap(src, repo=env["repo"])
    with Repo(env["repo"]) as r:
        for mode in ("symlink", "hardlink", "copy", "reflink"):
            r.clone(d.digest, env["tmp"] / mode, mode=mode)
            assert DirectorySnapshot.snap(env["tmp"] / mode, repo=r).digest == d.digest, mode
            again = DirectorySnapshot.snap(env["tmp"] / mode, repo=r)       # borrowed this time
            assert again.digest == d.digest, mode
    hl = env["tmp"] / "hardlink" / "a.txt"
    assert stat.S_IMODE(os.stat(hl).st_mode) == 0o444      # it is the cache object itself
    # a file that is not a hard link into the cache keeps its own mode
    plain = env["tmp"] / "plain"
    plain.mkdir()
    (plain / "f").write_text("same")
    os.chmod(plain / "f", 0o444)
    os.link(plain / "f", plain / "g")
    assert [m for _, _, m in _manifest_modes(env, plain)] == [0o444, 0o444]


def _manifest_modes(env, path):
    from chunkrepo.ops.snapshot import store
    with Repo(env["repo"]) as r:
        d = DirectorySnapshot.snap(path, repo=r).digest
        loc = store.locate(r.repository, d)
        return [(e.path, e.type, e.mode) for e, _ in store.dir_listing(r.repository, loc)]


# -- #8: a trailing slash means "into this directory" ------------------------------------
def test_trailing_slash_restores_into_a_directory(env):
    (env["tmp"] / "model.pt").write_bytes(b"weights")
    (env["tmp"] / "README").write_text("readme")
    f = FileSnapshot.snap(env["tmp"] / "model.pt", repo=env["repo"])
    n = FileSnapshot.snap(env["tmp"] / "README", repo=env["repo"])
    out = env["tmp"] / "out"
    for digest, name, where in ((f.digest, "model.pt", "out2"), (n.digest, "README", "out3")):
        p = cli("snapshot", "--repo", env["repo"], "--restore", digest, str(out / where) + "/")
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == str(out / where / name)
        assert (out / where).is_dir() and (out / where / name).is_symlink()
    got = n.restore_at(str(out / "out4") + "/")
    assert got == out / "out4" / "README" and got.read_text() == "readme"
    (out / "afile").write_text("x")
    with pytest.raises(NotADirectoryError):
        n.restore_at(str(out / "afile") + "/")
    p = cli("snapshot", "--repo", env["repo"], "--restore", n.digest, str(out / "afile") + "/")
    assert p.returncode == 1 and "not a directory" in p.stderr and p.stderr.count("\n") == 1
    assert (out / "afile").read_text() == "x"
    # without the slash a missing path is still the file's own name
    assert n.restore_at(out / "named") == out / "named" and (out / "named").is_symlink()


# -- #13: a bad mode creates nothing ---------------------------------------------------
def test_bad_mode_creates_nothing(env):
    src = _dataset(env["tmp"] / "src")
    d = DirectorySnapshot.snap(src, repo=env["repo"])
    f = FileSnapshot.snap(src / "a.txt", repo=env["repo"])
    with Repo(env["repo"]) as r:
        with pytest.raises(ValueError, match="mode must be one of"):
            r.clone(d.digest, env["tmp"] / "cl_bad", mode="bogus")
    with pytest.raises(ValueError, match="mode must be one of"):
        d.restore_at(env["tmp"] / "rs_bad", mode="bogus")
    with pytest.raises(ValueError, match="mode must be one of"):
        f.restore_at(env["tmp"] / "f_bad" / "a.txt", mode="bogus")
    assert not any(os.path.lexists(env["tmp"] / n) for n in ("cl_bad", "rs_bad", "f_bad"))
    assert not (env["cache"] / "objects").exists()        # nothing fetched either


# -- #14: clone reports --------------------------------------------------------------
def _reflink_works(tmp):
    a, b = tmp / "probe_a", tmp / "probe_b"
    a.write_bytes(b"x" * 4096)
    with open(a, "rb") as s, open(b, "wb") as d:
        try:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
            return True
        except OSError:
            return False


def _backup_and_clone(env, src):
    p = cli("backup", "--repo", env["repo"], str(src))
    assert p.returncode == 0, p.stderr
    p = cli("clone", "--repo", env["repo"], "--json", "latest", str(env["tmp"] / "work"), str(src))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_first_clone_of_a_backup_reports_the_objects_it_fetched(env):
    src = _dataset(env["tmp"] / "src")
    (src / "b.bin").write_bytes(os.urandom(50_000))
    res = _backup_and_clone(env, src)
    assert (res["objects_written"], res["bytes_written"]) == (3, 5 + 2 + 50_000)
    assert res["files"] == 3 and sum(len(f) for _, _, f in os.walk(env["cache"] / "objects")) == 3
    p = cli("clone", "--repo", env["repo"], "latest", str(env["tmp"] / "work2"), str(src))
    assert "fetched 0 objects" in p.stderr        # known to the cache now


def test_a_reflink_clone_that_copied_says_so(env):
    d = DirectorySnapshot.snap(_dataset(env["tmp"] / "src"), repo=env["repo"]).digest
    p = cli("clone", "--repo", env["repo"], "--json", "--mode", "reflink", d, str(env["tmp"] / "rl"))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["mode"] == ("reflink" if _reflink_works(env["tmp"]) else "copy")


def test_cache_clear_counts_only_links_it_leaves_dangling(env):
    src = _dataset(env["tmp"] / "src")
    _backup_and_clone(env, src)                                  # 2 live links in work/
    d = DirectorySnapshot.snap(src, repo=env["repo"]).digest
    p = cli("cache", "clear")
    assert p.returncode == 0 and "; 2 restored links now dangle" in p.stdout, p.stdout
    p = cli("clone", "--repo", env["repo"], "--no-download", d, str(env["tmp"] / "nd"))
    assert p.returncode == 0 and "2 links dangle" in p.stderr, p.stderr
    p = cli("cache", "clear")
    assert p.returncode == 0 and "; 0 restored links now dangle" in p.stdout, p.stdout
