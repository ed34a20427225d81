"""Snapshot API defects found by an outside tester (testC-REPORT #4, #9, #10, #11, #12, #15):
the repository inside a snapshotted directory, vanishing files, threads and processes writing
at once, remote repositories' options, bad-input messages, forget by digest."""

import os
import pickle
import shutil
import subprocess
import sys
import threading
import time

import pytest

from chunkrepo import DirectorySnapshot, FileSnapshot, Repo, restore
from chunkrepo.errors import ChunkrepoError, NotFound, RepoLocked
from tests.conftest import write_random

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKREPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CHUNKREPO_REPO", raising=False)
    monkeypatch.delenv("CHUNKREPO_STORAGE_OPTIONS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    repo = tmp_path / "repo"
    Repo.init(repo).close()
    return {"repo": str(repo), "tmp": tmp_path}


def cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "chunkrepo", *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT, **env))


def _manifest_paths(snap: DirectorySnapshot) -> set:
    return {str(f.relpath) if f.relpath else f.name for f in snap.files}


# -- #4: a directory holding the repository (and the local cache) -----------------------
def test_the_repository_and_the_cache_inside_a_snapshotted_directory_are_left_out(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    write_random(proj / "data" / "a.bin", 3 << 20, seed=4)
    (proj / "pyproject.toml").write_text("[project]\nname='p'\n")
    monkeypatch.setenv("CHUNKREPO_CACHE_DIR", str(proj / ".cache"))
    repo = proj / ".repo"
    Repo.init(repo).close()
    first = DirectorySnapshot.snap(proj, repo=str(repo))
    first.restore_safe()                               # fills proj/.cache
    assert sorted(f.name for f in first.files) == ["a.bin", "pyproject.toml"]
    second = DirectorySnapshot.snap(proj, repo=str(repo))     # the repository changed meanwhile
    assert second.digest == first.digest
    (tmp_path / "link").symlink_to(proj)               # reached through another name: still left out
    assert DirectorySnapshot.snap(tmp_path / "link", repo=str(repo)).digest == first.digest
    out = DirectorySnapshot.from_digest(first.digest, repo=str(repo)).restore_safe()
    assert sorted(os.listdir(out)) == ["data", "pyproject.toml"]
    for inside in (repo, repo / "index"):
        with pytest.raises(ChunkrepoError, match="is the repository .* or lies inside it"):
            DirectorySnapshot.snap(inside, repo=str(repo))
    p = cli("snapshot", "--repo", str(repo), str(proj), CHUNKREPO_CACHE_DIR=str(proj / ".cache"))
    assert p.returncode == 0 and p.stdout.strip() == first.digest, p.stderr
    with Repo(repo) as r:
        assert r.check(read_data=True).ok


# -- #9: a file or directory vanishing during the snapshot --------------------------------
def _delete_when_opened(big: str, victim: str, done: threading.Event, deleted: list) -> threading.Thread:
    """A thread that deletes victim as soon as this process has big open (the snapshot
    is reading it; victim sorts after it, so the snapshot has listed it but not reached it)."""
    def watch():
        while not done.is_set():
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{fd}") == big:
                        (shutil.rmtree if os.path.isdir(victim) else os.unlink)(victim)
                        deleted.append(victim)
                        return
                except OSError:
                    continue
    t = threading.Thread(target=watch)
    t.start()
    return t


@pytest.mark.parametrize("victim", ["z.txt", "zdir"])
def test_a_path_vanishing_during_a_directory_snapshot_is_a_changed_error(env, victim):
    src = env["tmp"] / "van"
    src.mkdir()
    write_random(src / "a_big.bin", 24 << 20, seed=9)
    for attempt in range(5):
        (src / "z.txt").write_text("z")
        (src / "zdir").mkdir(exist_ok=True)
        (src / "zdir" / "f").write_text("f")
        done, deleted = threading.Event(), []
        t = _delete_when_opened(str(src / "a_big.bin"), str(src / victim), done, deleted)
        try:
            DirectorySnapshot.snap(src, repo=env["repo"])
        except ChunkrepoError as e:
            assert str(e) == f"{src / victim}: changed while it was being snapshotted; try again"
            break
        finally:
            done.set()
            t.join()
        assert deleted, "the snapshot never opened a_big.bin"
    else:
        pytest.fail("the deletion never came before the snapshot reached the victim")
    with Repo(env["repo"]) as r:
        assert r.check().ok
    assert len(DirectorySnapshot.snap(src, repo=env["repo"]).files) >= 1     # a retry works


# -- #10: writers of one process take turns; other processes: RepoLocked or wait ----------
def test_a_snapshot_waits_for_another_thread_of_this_process(env):
    srcs = []
    for i in range(3):
        d = env["tmp"] / f"s{i}"
        d.mkdir()
        write_random(d / "f.bin", 1 << 20, seed=20 + i)
        srcs.append(d)
    got, errors = {}, []

    def snap(i, repo):
        try:
            got[i] = DirectorySnapshot.snap(srcs[i], repo=repo).digest
        except Exception as e:          # reported below
            errors.append(e)

    with Repo(env["repo"]) as r:
        with r.repository.write_session():        # another thread's session is running
            threads = [threading.Thread(target=snap, args=(0, r)),
                       threading.Thread(target=snap, args=(1, env["repo"]))]   # a Repo of its own
            for t in threads:
                t.start()
            for t in threads:
                t.join(1.0)
            assert all(t.is_alive() for t in threads) and not errors, errors   # waiting, not failed
        for t in threads:
            t.join()
        threads = [threading.Thread(target=snap, args=(i, r)) for i in range(3)]   # all at once
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(got) == 3 and len([x for x in r.list_backups() if x.kind == "snapshot"]) == 5
        for i, d in got.items():
            assert (DirectorySnapshot.from_digest(d, repo=r).restore_safe() / "f.bin").read_bytes() == \
                (srcs[i] / "f.bin").read_bytes()
        assert r.check().ok


HOLDER = r"""
import sys
from chunkrepo import Repo
with Repo(sys.argv[1]) as r, r.repository.write_session():
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_another_process_writing_is_repo_locked_unless_the_snapshot_waits(env):
    src = env["tmp"] / "w"
    src.mkdir()
    (src / "f.txt").write_text("wait for me")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, env["repo"]], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(RepoLocked, match=f"PID {holder.pid} "):
            DirectorySnapshot.snap(src, repo=env["repo"])
        with pytest.raises(RepoLocked):
            FileSnapshot.snap(src / "f.txt", repo=env["repo"], wait=0.3)
        waiting = subprocess.Popen([sys.executable, "-m", "chunkrepo", "snapshot", "--repo", env["repo"],
                                    "--wait", "120", str(src)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
        time.sleep(1.0)                 # (ordering only: let it meet the lock at least once)
        holder.stdin.write(b"go\n")
        holder.stdin.flush()
        out, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, err
        assert DirectorySnapshot.from_digest(out.strip(), repo=env["repo"]).files[0].name == "f.txt"
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    with pytest.raises(ValueError):
        FileSnapshot.snap(src / "f.txt", repo=env["repo"], wait=-1)


# -- #11: a remote repository's storage options ---------------------------------------------
def test_snapshot_objects_keep_a_remote_repositorys_storage_options(env, url_s3, monkeypatch):
    _fs, opts, bucket = url_s3
    monkeypatch.setenv("CHUNKREPO_INDEX_CACHE", str(env["tmp"] / "index-cache"))
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    src = env["tmp"] / "ds"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("alpha")
    url = f"s3://{bucket}/repo"
    with Repo.init(url, storage_options=opts) as r:
        d = DirectorySnapshot.snap(src, repo=r)
        x = DirectorySnapshot.from_digest(d.digest, repo=r)
        assert (x.restore_safe() / "sub" / "a.txt").read_text() == "alpha"
        f = FileSnapshot.snap(src / "sub" / "a.txt", repo=r)
    shutil.rmtree(env["tmp"] / "cache")
    # the Repo is closed: the objects open the repository again, with its options
    assert (d.restore_at(env["tmp"] / "out") / "sub" / "a.txt").read_text() == "alpha"
    assert f.open().read() == b"alpha"
    again = pickle.loads(pickle.dumps(x))
    assert again == x and again.files[0].open().read() == b"alpha"


# -- #12: bad input names the right problem ---------------------------------------------------
def test_bad_input_errors_name_the_right_problem(env):
    missing = env["tmp"] / "nope"
    for call in (lambda: DirectorySnapshot.snap(missing, repo=env["repo"]),
                 lambda: FileSnapshot.snap(missing, repo=env["repo"]),
                 lambda: DirectorySnapshot.snap(missing),
                 lambda: Repo(env["repo"]).snapshot(missing)):
        with pytest.raises(FileNotFoundError) as e:
            call()
        assert type(e.value) is FileNotFoundError and e.value.filename == str(missing)
        assert "b'" not in str(e.value)
    assert not (env["tmp"] / "xdg").exists()           # no default repository made for it
    src = env["tmp"] / "ds"
    (src / "x").mkdir(parents=True)
    (src / "x" / "a.txt").write_text("a")
    d = DirectorySnapshot.snap(src, repo=env["repo"])
    for bad in (123, b"ab", None):
        with pytest.raises(TypeError, match="a snapshot digest is a str"):
            restore(bad, repo=env["repo"])
        with pytest.raises(TypeError):
            FileSnapshot.from_digest(bad, repo=env["repo"])
    target = env["tmp"] / "ow"
    target.mkdir()
    (target / "x").write_text("a file where the snapshot has a directory")
    for overwrite in (True, False):
        with pytest.raises(FileExistsError) as e:
            d.restore_at(target, overwrite=overwrite)
        assert "pass overwrite=True" not in str(e.value) and "remove them first" in str(e.value)
    assert (target / "x").read_text().startswith("a file")


# -- #15: forget takes a snapshot digest; list-backups shows it --------------------------------
def test_forget_by_snapshot_digest_and_list_backups_shows_digests(env):
    a = env["tmp"] / "a"
    b = env["tmp"] / "b"
    for d, text in ((a, "one"), (b, "two")):
        d.mkdir()
        (d / "f.txt").write_text(text)
    da = DirectorySnapshot.snap(a, repo=env["repo"]).digest
    assert DirectorySnapshot.snap(a, repo=env["repo"]).digest == da       # two records, one digest
    db = DirectorySnapshot.snap(b, repo=env["repo"]).digest
    listing = cli("list-backups", "--repo", env["repo"]).stdout.splitlines()
    assert [line.rsplit("  digest ", 1)[1] for line in listing] == [da, da, db]
    p = cli("forget", "--repo", env["repo"], da[:12])
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "64-digit digest" in p.stderr
    p = cli("forget", "--repo", env["repo"], da.upper())
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("  remove  ") == 2 and "removed 2 backups, kept 1" in p.stdout
    with pytest.raises(FileNotFoundError):
        DirectorySnapshot.from_digest(da, repo=env["repo"])
    with Repo(env["repo"]) as r:
        res = r.forget([db], prune=True)
        assert len(res.removed) == 1 and r.list_backups() == []
        with pytest.raises(NotFound, match="no snapshot with digest"):
            r.forget([db])
        assert r.check(read_data=True).ok
