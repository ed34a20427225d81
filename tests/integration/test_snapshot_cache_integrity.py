"""The local cache is read-only only by convention (root writes 0444 files; a chmod through a
restored link or hard link reaches the object): a changed object must never be trusted as its
digest, neither for a restore nor by a snapshot or backup of a link to it.  And cache objects
keep a sparse file's holes.  Real files, a real repository (docs/snapshots.md, "The local cache")."""

import os
import stat

import blake3
import pytest

from chunkrepo import DirectorySnapshot, FileSnapshot, Repo
from tests.conftest import write_random

SIZE = 100_000


@pytest.fixture
def env(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CHUNKREPO_CACHE_DIR", str(cache))
    monkeypatch.delenv("CHUNKREPO_REPO", raising=False)
    ds = tmp_path / "ds"
    (ds / "sub").mkdir(parents=True)
    write_random(ds / "a.bin", SIZE, seed=1)
    write_random(ds / "sub" / "b.bin", 5000, seed=2)
    repo = str(tmp_path / "repo")
    Repo.init(repo).close()
    snap = DirectorySnapshot.snap(ds, repo=repo)
    digests = {f.name: f.digest for f in snap.files}
    return {"tmp": tmp_path, "cache": cache, "ds": ds, "repo": repo, "snap": snap, "a": digests["a.bin"],
            "b": digests["b.bin"]}


def b3(path) -> str:
    with open(path, "rb") as f:
        return blake3.blake3(f.read()).hexdigest()


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def stamp_files(env, digest):
    return list((env["cache"] / "stamps" / digest[:2]).glob(digest + ".*"))


def edit_in_place(path, data=b"XXXX"):
    """What a pipeline step does to its input: chmod (through a link: the target) and write in
    place, keeping the size."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(data)


def restored_links(env, name="out"):
    out = env["tmp"] / name
    DirectorySnapshot.from_digest(env["snap"].digest, repo=env["repo"]).restore_at(out)
    assert os.path.islink(out / "a.bin")
    return out


def test_snapshot_of_a_link_whose_object_was_written_stores_what_it_shows(env, monkeypatch):
    out = restored_links(env)
    edit_in_place(out / "a.bin")
    edited = read(out / "a.bin")
    s = DirectorySnapshot.snap(out, repo=env["repo"])
    got = {f.name: f.digest for f in s.files}
    assert got["a.bin"] == b3(out / "a.bin") != env["a"]
    assert got["b.bin"] == env["b"]
    # the edit is in the repository: a fresh cache gets it back by its digest
    monkeypatch.setenv("CHUNKREPO_CACHE_DIR", str(env["tmp"] / "cache2"))
    assert read(FileSnapshot.from_digest(got["a.bin"], repo=env["repo"]).restore_safe()) == edited
    # and the original is still the original
    assert b3(FileSnapshot.from_digest(env["a"], repo=env["repo"]).restore_safe()) == env["a"]


def test_a_changed_object_is_fetched_again_and_the_change_kept_aside(env):
    out = restored_links(env)
    edit_in_place(out / "a.bin")
    edited = read(out / "a.bin")
    with pytest.warns(UserWarning, match="changed after it was written"):
        p = DirectorySnapshot.from_digest(env["snap"].digest, repo=env["repo"]).restore_safe()
    assert b3(p / "a.bin") == env["a"]
    obj = env["cache"] / "objects" / env["a"][:2] / env["a"]
    assert stat.S_IMODE(os.stat(obj).st_mode) == 0o444
    kept = list((env["cache"] / "changed").iterdir())
    assert [read(k) for k in kept] == [edited] and kept[0].name.startswith(env["a"])
    f = FileSnapshot.from_digest(env["a"], repo=env["repo"])
    assert f.has_local_cache and f.open().read() == read(env["ds"] / "a.bin")
    Repo(env["repo"]).clone(env["snap"].digest, env["tmp"] / "clone")
    assert b3(env["tmp"] / "clone" / "a.bin") == env["a"]


@pytest.mark.parametrize("use", ["open", "clone", "restore_at"])
def test_every_use_of_the_cache_refuses_a_changed_object(env, use):
    out = restored_links(env)
    edit_in_place(out / "a.bin")
    f = FileSnapshot.from_digest(env["a"], repo=env["repo"])
    assert not f.has_local_cache
    with pytest.warns(UserWarning, match="changed after it was written"):
        if use == "open":
            data = f.open().read()
        elif use == "clone":
            Repo(env["repo"]).clone(env["snap"].digest, env["tmp"] / "c")
            data = read(env["tmp"] / "c" / "a.bin")
        else:
            data = read(f.restore_at(env["tmp"] / "r.bin", mode="copy"))
    assert data == read(env["ds"] / "a.bin")


def test_an_edit_that_keeps_size_and_mtime_is_noticed(env):
    out = restored_links(env)
    obj = os.path.realpath(out / "a.bin")
    before = os.stat(obj)
    edit_in_place(out / "a.bin")
    os.chmod(obj, 0o444)
    os.utime(obj, ns=(before.st_atime_ns, before.st_mtime_ns))    # only the ctime tells
    st = os.stat(obj)
    assert (st.st_size, st.st_mtime_ns, st.st_mode, st.st_ino) == \
        (before.st_size, before.st_mtime_ns, before.st_mode, before.st_ino)
    f = FileSnapshot.from_digest(env["a"], repo=env["repo"])
    assert not f.has_local_cache
    s = DirectorySnapshot.snap(out, repo=env["repo"])
    assert {x.name: x.digest for x in s.files}["a.bin"] == b3(out / "a.bin") != env["a"]


def test_an_object_without_its_stamp_is_hashed_not_trusted(env):
    """A cache written before stamps existed (or a lost stamp): the content decides."""
    f = FileSnapshot.from_digest(env["a"], repo=env["repo"])
    obj = f.download()
    stamps = env["cache"] / "stamps"
    for p in stamps.rglob("*"):
        if p.is_file():
            p.unlink()
    assert f.has_local_cache                                   # intact: hashed, stamped again
    assert len(stamp_files(env, env["a"])) == 1
    stamp_files(env, env["a"])[0].unlink()
    before = os.stat(obj)
    edit_in_place(obj)
    os.chmod(obj, 0o444)
    os.utime(obj, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert not f.has_local_cache


def test_a_hard_link_made_writable_no_longer_shares_the_cache_object(env):
    f = FileSnapshot.from_digest(env["a"], repo=env["repo"])
    dest = f.restore_at(env["tmp"] / "r.bin", mode="hardlink")
    obj = f.local_cache_path
    assert os.stat(dest).st_ino == os.stat(obj).st_ino
    assert f.has_local_cache                                  # a hard link alone changes nothing
    assert os.stat(dest).st_ino == os.stat(obj).st_ino
    os.chmod(dest, 0o644)                                     # the user's file: theirs to write
    assert f.has_local_cache                                  # the next use takes the cache's back
    assert os.stat(dest).st_ino != os.stat(obj).st_ino
    assert stat.S_IMODE(os.stat(obj).st_mode) == 0o444
    with open(dest, "r+b") as w:
        w.write(b"XXXX")
    assert b3(obj) == env["a"] and f.open().read() == read(env["ds"] / "a.bin")


def test_making_or_removing_a_hard_link_does_not_make_the_object_be_hashed_again(env):
    """A hard link changes the object's ctime and link count, nothing else: no hash (seen as
    its atime, which a read moves under relatime; skipped where reads do not move it)."""
    f = FileSnapshot.from_digest(env["a"], repo=env["repo"])
    obj = f.download()
    for stamp in stamp_files(env, env["a"]):
        stamp.unlink()
    atime = os.stat(obj).st_atime_ns
    assert f.has_local_cache                                  # no stamp: hashed
    if os.stat(obj).st_atime_ns == atime:
        pytest.skip("reads do not change atime here (noatime)")
    for _ in range(2):
        dest = f.restore_at(env["tmp"] / "r.bin", mode="hardlink", overwrite=True)
        atime = os.stat(obj).st_atime_ns
        assert f.has_local_cache and os.stat(obj).st_atime_ns == atime
        os.unlink(dest)
        assert f.has_local_cache and os.stat(obj).st_atime_ns == atime


def test_an_edit_through_a_hard_link_is_kept_with_the_user_and_fetched_again(env):
    f = FileSnapshot.from_digest(env["a"], repo=env["repo"])
    dest = f.restore_at(env["tmp"] / "r.bin", mode="hardlink")
    edit_in_place(dest)           # chmod and write before any use of the cache notices
    edited = read(dest)
    assert not f.has_local_cache
    with pytest.warns(UserWarning, match="changed after it was written"):
        assert f.open().read() == read(env["ds"] / "a.bin")
    assert read(dest) == edited


def test_backup_of_a_clone_stores_an_edited_link_as_what_it_shows(env):
    clone = env["tmp"] / "clone"
    with Repo(env["repo"]) as r:
        r.clone(env["snap"].digest, clone)
        edit_in_place(clone / "a.bin")
        edited = read(clone / "a.bin")
        res = r.backup([clone])
        assert res.bytes_read == SIZE               # the edited file is read; b.bin is not
        back = env["tmp"] / "back"
        r.restore(res.id, back)
    restored = back / str(clone).lstrip("/")
    assert read(restored / "a.bin") == edited
    assert read(restored / "sub" / "b.bin") == read(env["ds"] / "sub" / "b.bin")


def _holes_supported(tmp_path) -> bool:
    p = tmp_path / "probe"
    with open(p, "wb") as f:
        f.truncate(16 << 20)
        f.write(b"x")
    ok = os.stat(p).st_blocks * 512 < (1 << 20)
    p.unlink()
    return ok


def test_cache_objects_and_copies_keep_a_sparse_files_holes(env, monkeypatch):
    if not _holes_supported(env["tmp"]):
        pytest.skip("this filesystem does not keep holes")
    big = env["tmp"] / "big.sparse"
    size = 64 << 20
    with open(big, "wb") as f:
        f.truncate(size)
        f.seek(size // 2)
        f.write(b"x")
        f.seek(size - 3)
        f.write(b"end")
    s = FileSnapshot.snap(big, repo=env["repo"])
    assert s.digest == b3(big)
    p = s.restore_safe()
    assert os.stat(p).st_size == size and os.stat(p).st_blocks * 512 < (1 << 20)
    assert b3(p) == s.digest
    c = s.restore_at(env["tmp"] / "copy.sparse", mode="copy")
    assert os.stat(c).st_size == size and os.stat(c).st_blocks * 512 < (1 << 20)
    assert b3(c) == s.digest
    # a clone of a plain backup materialises without a known digest: holes kept too
    monkeypatch.setenv("CHUNKREPO_CACHE_DIR", str(env["tmp"] / "cache2"))
    with Repo(env["repo"]) as r:
        rec = r.backup([big])
        r.clone(rec.id, env["tmp"] / "bclone", str(big))
    obj = os.path.realpath(env["tmp"] / "bclone" / "big.sparse")
    assert obj.startswith(str(env["tmp"] / "cache2")) and os.path.basename(obj) == s.digest
    assert os.stat(obj).st_blocks * 512 < (1 << 20)
