"""Repositories on object stores: fsspec memory://, S3 through moto, and (marked ceph) a real Ceph RGW.

Every "machine" is an index cache directory: a second machine is an empty one.
"""

import io
import json
import logging
import os
import socket
import subprocess
import sys
import tarfile
import time
import uuid

import fsspec
import pytest

from chunkrepo import Repo
from chunkrepo.errors import NotARepository, RepoLocked, StorageError
from chunkrepo.repository.config import Config
from chunkrepo.repository.lease import LeaseLock, read_lock
from chunkrepo.repository.packs import pack_name
from chunkrepo.storage.faults import Fault, FaultyStorage
from tests.conftest import age, write_random

moto_server = pytest.importorskip("moto.server")

S3_CREDS = {"key": "testkey", "secret": "testsecret"}


@pytest.fixture(scope="module")
def moto_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{server._server.server_port}"
    server.stop()


def _new_bucket(endpoint, creds) -> str:
    import s3fs
    name = f"t{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=endpoint, **creds).mkdir(name)
    return name


@pytest.fixture(params=["memory", "moto"])
def remote(request, tmp_path, monkeypatch):
    """(url, storage options) of an empty remote repository location."""
    monkeypatch.setenv("CHUNKREPO_INDEX_CACHE", str(tmp_path / "machine1"))
    if request.param == "memory":
        name = f"/t{uuid.uuid4().hex}"
        yield f"memory://{name}/repo", {}
        fsspec.filesystem("memory").rm(name, recursive=True)
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        opts = dict(S3_CREDS, endpoint_url=endpoint)
        yield f"s3://{_new_bucket(endpoint, S3_CREDS)}/repo", opts


def machine(monkeypatch, tmp_path, name):
    """Switch to another host's index cache."""
    monkeypatch.setenv("CHUNKREPO_INDEX_CACHE", str(tmp_path / name))


@pytest.fixture
def src(tmp_path):
    s = tmp_path / "src"
    (s / "sub" / "deeper").mkdir(parents=True)
    (s / "a.txt").write_text("alpha\n")
    write_random(s / "sub" / "big.bin", 3 << 20, seed=1)
    write_random(s / "sub" / "deeper" / "mid.bin", 200_000, seed=2)
    os.symlink("a.txt", s / "link")
    for p in (s / "a.txt", s / "sub" / "big.bin", s / "sub" / "deeper" / "mid.bin"):
        age(p)
    return s


def tree_of(root) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[rel] = ("file", f.read(), os.stat(p).st_mode & 0o7777)
            else:
                out[rel] = ("dir",)
    return out


def restored(repo, bid, tmp_path, src, name="out"):
    target = tmp_path / name
    repo.restore(bid, target)
    return tree_of(target / os.path.relpath(src, "/"))


def test_backup_list_ls_tar_restore_check(remote, tmp_path, src):
    url, opts = remote
    with Repo.init(url, storage_options=opts) as repo:
        res = repo.backup([src])
        assert [b.id for b in repo.list_backups()] == [res.id]
        names = {os.fsdecode(e.path) for e in repo.list_backup(res.id)}
        assert os.path.relpath(src / "sub" / "deeper" / "mid.bin", "/") in names
        buf = io.BytesIO()
        repo.produce_tar(res.id, buf)
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tf:
            member = tf.extractfile(os.path.relpath(src / "sub" / "big.bin", "/"))
            assert member.read() == (src / "sub" / "big.bin").read_bytes()
        assert restored(repo, res.id, tmp_path, src) == tree_of(src)
        report = repo.check(read_data=True)
        assert report.ok, report


def test_second_machine_with_an_empty_cache_lists_and_restores(remote, tmp_path, src, monkeypatch):
    url, opts = remote
    with Repo.init(url, storage_options=opts) as repo:
        first = repo.backup([src]).id
        (src / "new.txt").write_text("later\n")
        second = repo.backup([src]).id
    machine(monkeypatch, tmp_path, "machine2")
    with Repo(url, storage_options=opts) as repo:
        assert [b.id for b in repo.list_backups()] == [first, second]
        assert "new.txt" not in restored(repo, first, tmp_path, src, "out1")
        assert restored(repo, second, tmp_path, src, "out2") == tree_of(src)
        assert repo.check(read_data=True).ok
    assert os.path.isdir(tmp_path / "machine2")


def test_stale_cache_is_refreshed_after_another_writer(remote, tmp_path, src, monkeypatch):
    url, opts = remote
    with Repo.init(url, storage_options=opts) as repo:
        first = repo.backup([src]).id
    machine(monkeypatch, tmp_path, "machine2")
    with Repo(url, storage_options=opts) as repo:          # machine 2 adds a backup: the store grew
        (src / "m2.txt").write_text("from machine 2\n")
        second = repo.backup([src]).id
    machine(monkeypatch, tmp_path, "machine1")
    with Repo(url, storage_options=opts) as repo:          # machine 1's cache is stale: synced on open
        assert [b.id for b in repo.list_backups()] == [first, second]
        assert restored(repo, second, tmp_path, src, "out1") == tree_of(src)
        repo.forget([first], prune=True)                    # the store shrinks
        (src / "m1.txt").write_text("from machine 1\n")
        third = repo.backup([src]).id
    machine(monkeypatch, tmp_path, "machine2")
    with Repo(url, storage_options=opts) as repo:          # rebuilt: backup and packs went away
        assert [b.id for b in repo.list_backups()] == [second, third]
        assert restored(repo, third, tmp_path, src, "out2") == tree_of(src)
        report = repo.check(read_data=True)
        assert report.ok, report


class _CountingGets:
    """The repository's storage, counting the reads of each object name."""

    def __init__(self, inner):
        self.inner, self.gets = inner, []

    def get(self, name, offset=0, length=None):
        self.gets.append(name)
        return self.inner.get(name, offset, length)

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


def test_a_writer_reads_generation_once_under_the_lease_and_syncs(remote, tmp_path, src, monkeypatch):
    """No read of `generation` before the lease (it would be stale by then): the one after
    it still brings a stale cache up to date before the backup looks for its parent."""
    url, opts = remote
    with Repo.init(url, storage_options=opts) as repo:
        repo.backup([src])
    machine(monkeypatch, tmp_path, "machine2")
    with Repo(url, storage_options=opts) as repo:
        (src / "m2.txt").write_text("from machine 2\n")
        second = repo.backup([src]).id
    machine(monkeypatch, tmp_path, "machine1")
    counting = []
    with Repo(url, storage_options=opts, wrap_storage=lambda s: counting.append(_CountingGets(s)) or counting[0]) \
            as repo:
        res = repo.backup([src])
        # one read to sync, then one before and one after the backup record's PUT (the lock
        # check: no other writer began) and one at the end (the cache is still current)
        assert counting[0].gets.count("generation") == 4
        assert res.parent == second and res.files_borrowed >= 3
        assert [b.id for b in repo.list_backups()][1:] == [second, res.id]
        assert counting[0].gets.count("generation") == 4     # the writer left its cache current


def test_rebuild_index_refills_the_cache_from_the_store(remote, tmp_path, src):
    url, opts = remote
    with Repo.init(url, storage_options=opts) as repo:
        bid = repo.backup([src]).id
        cache = repo.repository.cache.index_path
    res = Repo.rebuild_index(url, opts)
    assert res.backups == 1 and res.packs >= 1 and res.damaged_packs == []
    assert os.path.isdir(cache)
    with Repo(url, storage_options=opts) as repo:
        assert [b.id for b in repo.list_backups()] == [bid]
        assert restored(repo, bid, tmp_path, src) == tree_of(src)


def test_a_writer_killed_midway_leaves_a_cache_that_is_rebuilt(remote, tmp_path, src, monkeypatch):
    url, opts = remote
    with Repo.init(url, storage_options=opts) as repo:
        first = repo.backup([src]).id
        session = repo.repository.write_session()
        session.__enter__()                   # a writer that dies without ending its session
        session.add_chunk(b"x" * 5000)
        session.flush()
        session._lock.lease._stop.set()       # it stops refreshing, as a dead process would,
        repo.repository.cache.unlock()        # and the kernel frees its flock
        held = read_lock(repo.repository.storage)
        repo.repository.storage.put("lock", json.dumps(dict(held, expires=time.time() - 1)).encode())
    machine(monkeypatch, tmp_path, "machine2")
    with Repo(url, storage_options=opts) as repo:
        second = repo.backup([src]).id         # takes the expired lock over
    machine(monkeypatch, tmp_path, "machine1")
    with Repo(url, storage_options=opts) as repo:
        assert [b.id for b in repo.list_backups()] == [first, second]
        assert repo.check(read_data=True).ok


@pytest.mark.parametrize("fault, message", [
    (Fault("write", "packs/", after=3, kind="EIO"), "Input/output error"),
    (Fault("commit", "packs/", after=2, kind="EIO"), "packs/"),          # an upload fails
    (Fault("put", "backups/", kind="EIO"), "writing backups/"),
])
def test_failed_uploads_leave_nothing_referenced(tmp_path, monkeypatch, fault, message):
    """Packs are uploaded by a pool while the next ones fill: a failure still fails
    the backup with one line, and the next backup and check --read-data are clean."""
    url = f"memory:///t{uuid.uuid4().hex}/repo"
    monkeypatch.setenv("CHUNKREPO_INDEX_CACHE", str(tmp_path / "machine1"))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        write_random(src / f"f{i}.bin", 700_000, seed=i)
        age(src / f"f{i}.bin")
    Repo.init(url, Config(pack_size=1 << 20)).close()
    with Repo(url, wrap_storage=lambda s: FaultyStorage(s, [fault])) as repo:
        with pytest.raises(StorageError, match=message) as info:
            repo.backup([src])
        assert "\n" not in str(info.value) and repo.list_backups() == []
    machine(monkeypatch, tmp_path, "machine2")
    with Repo(url) as repo:
        bid = repo.backup([src]).id
        assert repo.check(read_data=True).ok
        assert restored(repo, bid, tmp_path, src) == tree_of(src)


def test_coalesced_read_error_names_the_file_and_restores_nothing_partial(tmp_path, monkeypatch):
    """A pack that cannot be read fails every file; a failed ranged GET of several blobs is
    followed by a GET of each (which succeed once the storage heals): no file is lost."""
    url = f"memory:///t{uuid.uuid4().hex}/repo"
    monkeypatch.setenv("CHUNKREPO_INDEX_CACHE", str(tmp_path / "machine1"))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"small{i:02}.txt").write_text(f"file {i}\n" * 50)
    with Repo.init(url) as repo:
        bid = repo.backup([src]).id
    with Repo(url, wrap_storage=lambda s: FaultyStorage(s, [Fault("get", "packs/", kind="EIO")])) as repo:
        res = repo.restore(bid, tmp_path / "out")
    assert len(res.errors) == 20 and all("Input/output error" in e and "/small" in e for e in res.errors)
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))
    once = Fault("get", "packs/", kind="EIO", times=1)
    with Repo(url, wrap_storage=lambda s: FaultyStorage(s, [once])) as r:
        res = r.restore(bid, tmp_path / "out2")
    assert once.fired == 1 and once.hits > 1
    assert res.errors == [] and res.files == 20
    out2 = tmp_path / "out2" / src.relative_to("/")
    for p in src.iterdir():
        assert (out2 / p.name).read_bytes() == p.read_bytes()
    with Repo(url) as repo:
        assert restored(repo, bid, tmp_path, src, "out3") == tree_of(src)


def test_truncated_pack_fails_only_the_files_past_the_cut(remote, tmp_path):
    """Ranged GETs of neighbouring blobs (on an object store also across gaps) that reach
    past the end of a pack cut short: each blob is read alone, only the files past the cut fail."""
    url, opts = remote
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        write_random(src / f"f{i:02}", 2000 + 100 * i, seed=i)
    with Repo.init(url, storage_options=opts) as repo:
        bid = repo.backup([src]).id
        r = repo.repository
        with r.index.read() as v:
            chunk = {os.path.basename(os.fsdecode(e.path)): v.chunk(e.node.chunk_ids()[0])
                     for e in repo.list_backup(bid) if e.node.chunks}
        (pack,) = {e.pack for e in chunk.values()}
        mid = sorted(chunk.values(), key=lambda e: e.offset)[15]
        cut = mid.offset + mid.length // 2
        name = pack_name(pack)
        r.storage.put(name, r.storage.get(name)[:cut])
        damaged = sorted(n for n, e in chunk.items() if e.offset + e.length > cut)
        assert len(damaged) == 15
        res = repo.restore(bid, tmp_path / "out")
    assert sorted(e.split(":")[0].rsplit("/", 1)[1] for e in res.errors) == damaged
    out = tmp_path / "out" / src.relative_to("/")
    for p in src.iterdir():
        assert (not (out / p.name).exists()) if p.name in damaged else (out / p.name).read_bytes() == p.read_bytes()


def test_second_writer_is_refused_while_the_first_holds_the_lease(remote, tmp_path, monkeypatch):
    url, opts = remote
    with Repo.init(url, storage_options=opts) as repo, repo.repository.write_session():
        machine(monkeypatch, tmp_path, "machine2")
        with Repo(url, storage_options=opts) as other:
            with pytest.raises(RepoLocked) as e:
                with other.repository.write_session():
                    pass
    msg = str(e.value)
    assert f"PID {os.getpid()} on {socket.gethostname()}" in msg and "lease expires in" in msg
    assert "\n" not in msg


def test_expired_lease_is_taken_over_with_a_message(remote, tmp_path, src, caplog):
    url, opts = remote
    with Repo.init(url, storage_options=opts) as repo:
        storage = repo.repository.storage
        storage.put("lock", json.dumps({"token": "t", "pid": 4242, "host": "elsewhere",
                                        "since": "2026-01-01T00:00:00+00:00",
                                        "expires": time.time() - 5, "lease": 60}).encode())
        with caplog.at_level(logging.WARNING, logger="chunkrepo"):
            bid = repo.backup([src]).id
        assert "taking over the lock of PID 4242 on elsewhere" in caplog.text
        assert not storage.exists("lock")
        assert [b.id for b in repo.list_backups()] == [bid]


def test_lease_is_refreshed_and_a_lost_lease_stops_the_commit(remote):
    url, opts = remote
    with Repo.init(url, storage_options=opts) as repo:
        storage = repo.repository.storage
        lock = LeaseLock(storage, lease=30, refresh=0.05)
        lock.acquire()
        first = read_lock(storage)["expires"]
        deadline = time.monotonic() + 20
        while read_lock(storage)["expires"] == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert read_lock(storage)["expires"] > first
        storage.delete("lock")                    # removed under it (unlock on another host)
        while lock.lost is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(RepoLocked, match="lost the repository lock"):
            lock.check()
        lock.release()
        assert not storage.exists("lock")


def test_file_url_is_a_local_repository(tmp_path, src):
    url = f"file://{tmp_path}/repo"
    with Repo.init(url) as repo:
        bid = repo.backup([src]).id
        assert not repo.repository.remote and repo.path == str(tmp_path / "repo")
    assert (tmp_path / "repo" / "index" / "data.mdb").is_file() and (tmp_path / "repo" / "config").is_file()
    with Repo(tmp_path / "repo") as repo:
        assert [b.id for b in repo.list_backups()] == [bid]


@pytest.mark.parametrize("client", ["native", "s3fs"])
def test_init_creates_a_missing_bucket(tmp_path, moto_endpoint, monkeypatch, client):
    monkeypatch.setenv("CHUNKREPO_INDEX_CACHE", str(tmp_path / "machine1"))
    url = f"s3://t{uuid.uuid4().hex[:12]}/repo"
    opts = dict(S3_CREDS, endpoint_url=moto_endpoint, client=client)
    with Repo.init(url, storage_options=opts) as repo:
        assert repo.list_backups() == []
    with Repo(url, storage_options=opts) as repo:
        assert repo.repository.config.repo_id


def test_bad_locations_are_one_line_errors(tmp_path, moto_endpoint):
    with pytest.raises(StorageError, match="unknown storage scheme 'nosuch'"):
        Repo("nosuch://x/y")
    with pytest.raises(NotARepository, match="names no bucket"):
        Repo("s3://", storage_options=dict(S3_CREDS, endpoint_url=moto_endpoint))
    with pytest.raises(NotARepository, match="no config"):
        Repo("s3://missing-bucket-zz/r", storage_options=dict(S3_CREDS, endpoint_url=moto_endpoint))
    with pytest.raises(NotARepository, match="no config"):
        Repo(f"memory:///nothing-{uuid.uuid4().hex}")


# -- the command line (subprocesses against moto) --------------------------------------------------------

def run(*args, env, check=True):
    p = subprocess.run([sys.executable, "-m", "chunkrepo", *args], capture_output=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {p.stderr.decode()}")
    return p


@pytest.fixture
def cli_env(tmp_path):
    e = dict(os.environ, CHUNKREPO_INDEX_CACHE=str(tmp_path / "cli-cache"), AWS_ACCESS_KEY_ID="testkey",
             AWS_SECRET_ACCESS_KEY="testsecret", AWS_DEFAULT_REGION="us-east-1")
    e.pop("CHUNKREPO_STORAGE_OPTIONS", None)
    return e


def test_cli_on_s3_with_storage_option(tmp_path, src, moto_endpoint, cli_env):
    url = f"s3://{_new_bucket(moto_endpoint, S3_CREDS)}/cli"
    opt = ("--storage-option", f"endpoint_url={moto_endpoint}")
    run("init", "--repo", url, *opt, env=cli_env)
    bid = run("backup", "--repo", url, *opt, str(src), env=cli_env).stdout.decode().split()[-1]
    assert bid in run("list-backups", "--repo", url, *opt, env=cli_env).stdout.decode()
    other = dict(cli_env, CHUNKREPO_INDEX_CACHE=str(tmp_path / "cli-cache2"),
                 CHUNKREPO_STORAGE_OPTIONS=json.dumps({"endpoint_url": moto_endpoint}), CHUNKREPO_REPO=url)
    listing = run("ls", bid, "--simple", env=other).stdout.decode()
    assert "sub/deeper/mid.bin" in listing
    run("restore", bid, "--target", str(tmp_path / "out"), env=other)
    assert tree_of(tmp_path / "out" / os.path.relpath(src, "/")) == tree_of(src)
    run("check", "--read-data", env=other)


def test_cli_lock_conflict_and_unlock(tmp_path, moto_endpoint, cli_env):
    url = f"s3://{_new_bucket(moto_endpoint, S3_CREDS)}/locked"
    opt = ("--storage-option", f"endpoint_url={moto_endpoint}")
    run("init", "--repo", url, *opt, env=cli_env)
    with Repo(url, storage_options=dict(S3_CREDS, endpoint_url=moto_endpoint)) as repo:
        repo.repository.storage.put("lock", json.dumps({
            "token": "t", "pid": 4242, "host": "elsewhere", "since": "2026-01-01T00:00:00+00:00",
            "expires": time.time() + 600, "lease": 600}).encode())
    p = run("backup", "--repo", url, *opt, str(tmp_path), env=cli_env, check=False)
    err = p.stderr.decode()
    assert p.returncode != 0 and err.startswith("chunkrepo: error: repository is locked by PID 4242 on elsewhere")
    assert err.count("\n") == 1
    p = run("unlock", "--repo", url, *opt, env=cli_env)
    assert "removed the lock of PID 4242" in p.stderr.decode()
    assert "not locked" in run("unlock", "--repo", url, *opt, env=cli_env).stderr.decode()


def test_cli_on_s3_imports_no_s3fs_stack(tmp_path, moto_endpoint, cli_env):
    """The native client is the point: s3fs, botocore and aiohttp cost ~0.7 s of CPU to import."""
    url = f"s3://{_new_bucket(moto_endpoint, S3_CREDS)}/light"
    opt = ("--storage-option", f"endpoint_url={moto_endpoint}")
    run("init", "--repo", url, *opt, env=cli_env)
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "chunkrepo", "list-backups", "--repo", url, *opt],
                       capture_output=True, env=cli_env, check=True)
    imported = {line.split("|")[-1].strip() for line in p.stderr.decode().splitlines()
                if line.startswith("import time")}
    assert "chunkrepo.storage.s3_storage" in imported
    assert not imported & {"fsspec", "s3fs", "botocore", "aiobotocore", "aiohttp"}
    local = str(tmp_path / "local")
    run("init", "--repo", local, env=cli_env)
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "chunkrepo", "list-backups", "--repo", local],
                       capture_output=True, env=cli_env, check=True)
    assert "http.client" not in p.stderr.decode()       # a local repository does not pay for the client


@pytest.mark.parametrize("args, words", [
    (("--repo", "nosuch://b/x"), "unknown storage scheme"),
    (("--repo", "s3://no-such-bucket-q/x"), "no config"),
    (("--repo", "s3://b/x", "--storage-option", "novalue"), "bad storage option"),
])
def test_cli_bad_urls_are_one_line_errors(args, words, moto_endpoint, cli_env):
    p = run("list-backups", *args, "--storage-option", f"endpoint_url={moto_endpoint}", env=cli_env, check=False)
    err = p.stderr.decode()
    assert p.returncode != 0 and err.startswith("chunkrepo: error: ") and words in err
    assert err.count("\n") == 1


# -- a real object store ---------------------------------------------------------------------------------

@pytest.mark.ceph
@pytest.mark.parametrize("client", ["native", "s3fs"])
def test_end_to_end_on_ceph_rgw(tmp_path, src, monkeypatch, client):
    """backup, lock conflict, copy from a local repository, and byte-identical restores on
    machines with empty caches, on a real RGW through each S3 client."""
    endpoint = os.environ.get("CHUNKREPO_TEST_S3_ENDPOINT")
    if not endpoint:
        pytest.skip("no Ceph RGW: set CHUNKREPO_TEST_S3_ENDPOINT (see ../shared/s3/README.md)")
    creds = {"key": os.environ.get("CHUNKREPO_TEST_S3_KEY", "testkey"),
             "secret": os.environ.get("CHUNKREPO_TEST_S3_SECRET", "testsecret")}
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    opts = dict(creds, endpoint_url=endpoint, client=client)
    bucket = _new_bucket(endpoint, creds)
    url = f"s3://{bucket}/repo"
    machine(monkeypatch, tmp_path, "machine1")
    with Repo.init(url, storage_options=opts) as repo:
        assert type(repo.repository.storage.inner).__name__ == ("S3Storage" if client == "native" else "FsspecStorage")
        first = repo.backup([src]).id
        with pytest.raises(RepoLocked), repo.repository.write_session():
            with Repo(url, storage_options=opts) as other, other.repository.write_session():
                pass
    with Repo.init(tmp_path / "local") as local:
        (src / "only-local.txt").write_text("copied\n")
        copied = local.backup([src]).id
        with Repo.init(f"s3://{bucket}/copy", storage_options=opts) as offsite:
            assert local.copy_to(offsite).backups_copied == [copied]
    machine(monkeypatch, tmp_path, "machine2")
    with Repo(url, storage_options=opts) as repo:
        assert [b.id for b in repo.list_backups()] == [first]
        assert "only-local.txt" not in restored(repo, first, tmp_path, src)
        assert repo.check(read_data=True).ok
    with Repo(f"s3://{bucket}/copy", storage_options=opts) as repo:
        assert restored(repo, copied, tmp_path, src, "out-copy") == tree_of(src)
        assert repo.check(read_data=True).ok


def test_cli_copy_offsite_to_s3_then_restore_on_a_fresh_machine(tmp_path, src, moto_endpoint, cli_env):
    """The offsite workflow end to end: a local repository, copied to S3 with --to-option,
    resumed by a second run that sends nothing, restored by a machine with an empty cache."""
    local = str(tmp_path / "local")
    run("init", "--repo", local, env=cli_env)
    bid = run("backup", "--repo", local, str(src), env=cli_env).stdout.decode().split()[-1]
    url = f"s3://{_new_bucket(moto_endpoint, S3_CREDS)}/offsite"
    run("init", "--repo", url, "--storage-option", f"endpoint_url={moto_endpoint}", env=cli_env)
    to = ("--to-option", f"endpoint_url={moto_endpoint}")
    first = json.loads(run("copy", "--from", local, "--to", url, *to, "--json", env=cli_env).stdout)
    assert first["backups_copied"] == [bid] and first["chunks_sent"] > 0
    again = json.loads(run("copy", "--from", local, "--to", url, *to, "--json", env=cli_env).stdout)
    assert again["backups_copied"] == [] and again["backups_present"] == [bid] and again["chunks_sent"] == 0
    fresh = dict(cli_env, CHUNKREPO_INDEX_CACHE=str(tmp_path / "fresh-machine"))
    opt = ("--storage-option", f"endpoint_url={moto_endpoint}")
    run("restore", "--repo", url, *opt, bid, "--target", str(tmp_path / "out"), env=fresh)
    assert tree_of(tmp_path / "out" / os.path.relpath(src, "/")) == tree_of(src)
    run("check", "--repo", url, *opt, "--read-data", env=fresh)
    bad = run("copy", "--from", local, "--to", url, "--to-option", "nonsense", env=cli_env, check=False)
    assert bad.returncode != 0 and bad.stderr.decode().count("\n") == 1 and "key=value" in bad.stderr.decode()
