"""Backups from, and restores to, fsspec URLs: memory:// and S3 (moto's server on loopback).

The memory and moto fixtures (url_mem, url_moto, url_s3) are in tests/integration/conftest.py.
"""

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time

import pytest

from chunkrepo.errors import ChunkrepoError, NotFound, TargetNotEmpty
from chunkrepo.ops.backup import BackupOptions
from chunkrepo.ops.backup.fsspec_source import ObjectInfo, file_node, run_url_backup, unchanged
from chunkrepo.ops.traverse import find_node
from chunkrepo.repository.packs import pack_name
from tests.conftest import age

fsspec = pytest.importorskip("fsspec")
FUTURE = 10 * 10**9      # a clock this far ahead makes the racy-timestamp rule trust fresh mtimes


def later_clock():
    return time.time_ns() + FUTURE


def rnd(n, seed):
    return random.Random(seed).randbytes(n)


# -- S3 on moto ---------------------------------------------------------------

def multipart_put(endpoint, bucket, key, parts):
    import boto3
    c = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1")
    up = c.create_multipart_upload(Bucket=bucket, Key=key)
    done = []
    for i, data in enumerate(parts, 1):
        r = c.upload_part(Bucket=bucket, Key=key, PartNumber=i, UploadId=up["UploadId"], Body=data)
        done.append({"PartNumber": i, "ETag": r["ETag"]})
    c.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                MultipartUpload={"Parts": done})


def contents(fs, root) -> dict:
    """relative key -> bytes of every file below root."""
    fs.invalidate_cache()
    return {p[len(root) + 1:]: fs.cat_file(p) for p in fs.find(root)}


def local_contents(root) -> dict:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def fill(fs, root, files: dict):
    for rel, data in files.items():
        fs.pipe(f"{root}/{rel}", data)


SOURCE = {"a.txt": b"alpha\n", "empty": b"", "sub/b.bin": rnd(3 << 20, 1), "sub/deep/c": b"c" * 1000}


# -- memory:// ----------------------------------------------------------------

def test_memory_backup_restores_byte_identical_and_second_backup_reads_nothing(repo, url_mem, tmp_path):
    fs, root = url_mem
    fill(fs, root, SOURCE)
    r1 = repo.backup([f"memory:/{root}/"], clock=later_clock)
    assert (r1.files, r1.dirs, r1.bytes_read, r1.skipped) == (4, 3, sum(map(len, SOURCE.values())), 0)
    rec = repo.get_backup(r1.id)
    assert rec.subset == rec.paths[0] == f"memory:/{root}"
    listed = {e.path: e.node for e in repo.list_backup(r1.id)}
    assert sorted(listed) == [b"a.txt", b"empty", b"sub", b"sub/b.bin", b"sub/deep", b"sub/deep/c"]
    assert listed[b"a.txt"].mode == 0o100644 and listed[b"sub"].mode == 0o40755
    assert listed[b"sub/b.bin"].size == 3 << 20 and len(listed[b"sub/b.bin"].chunk_ids()) > 1

    repo.restore(r1.id, tmp_path / "out")
    assert local_contents(tmp_path / "out") == SOURCE
    res = repo.restore(r1.id, f"memory:/{root}-copy")
    assert res.files == 4 and contents(fs, root + "-copy") == SOURCE
    fs.rm(root + "-copy", recursive=True)

    r2 = repo.backup([f"memory:/{root}"])
    assert (r2.bytes_read, r2.files_borrowed, r2.parent) == (0, 4, r1.id)
    assert repo.get_backup(r2.id).root == rec.root        # every record the same: nothing new

    fs.pipe(f"{root}/a.txt", b"ALPHA!\n")                  # a new size is seen without an ETag
    r3 = repo.backup([f"memory:/{root}"], clock=later_clock)
    assert (r3.bytes_read, r3.files_borrowed) == (7, 3)


def test_a_url_backup_into_a_local_repository_reads_with_threads(repo, url_mem, tmp_path):
    """Objects are read through their filesystem: reader processes (which open local
    paths) never take a URL backup's batches, however much it reads."""
    fs, root = url_mem
    fill(fs, root, SOURCE)
    r1 = repo.backup([f"memory:/{root}/"], processes_after=0)
    assert r1.reader_processes == 0 and r1.errors == [] and r1.files == 4
    repo.restore(r1.id, tmp_path / "out")
    assert local_contents(tmp_path / "out") == SOURCE


def test_file_url_backup_skips_symlinks_and_trusts_old_mtimes(repo, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"local file")
    (src / "d" / "link").symlink_to("f")
    age(src / "d" / "f")
    url = f"file://{src}"
    r1 = repo.backup([url])
    assert r1.errors == [f"{url}/d/link: is not a regular file or directory (other): skipped"]
    assert [e.path for e in repo.list_backup(r1.id)] == [b"d", b"d/f"]
    r2 = repo.backup([url])
    assert (r2.bytes_read, r2.files_borrowed) == (0, 1)
    repo.restore(r2.id, tmp_path / "out")
    assert local_contents(tmp_path / "out") == {"d/f": b"local file"}


def test_the_repository_is_left_out_of_a_local_url_backup_only(repo, url_mem, tmp_path):
    (tmp_path / "f").write_bytes(b"f")
    r = repo.backup([f"file://{tmp_path}"])
    assert [e.path for e in repo.list_backup(r.id)] == [b"f"]     # not repo/ itself
    fs, root = url_mem
    same_name = os.path.relpath(repo.path, "/") + "/x"      # /REPO/x, but in memory://
    fill(fs, root, {same_name: b"x"})
    r = repo.backup([f"memory:/{root}"])
    assert f"/{same_name}".encode() in [b"/" + e.path for e in repo.list_backup(r.id)]


class _Unlistable:
    """A filesystem whose listing of one directory fails (a permission the store refuses)."""

    def __init__(self, fs, key):
        self.fs, self.key = fs, key

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def ls(self, path, **kw):
        if path.rstrip("/") == self.key:
            raise PermissionError(f"Access Denied listing {path}")
        return self.fs.ls(path, **kw)


def test_a_directory_that_cannot_be_listed_is_reported_and_the_root_is_fatal(repo, url_mem):
    fs, root = url_mem
    fill(fs, root, SOURCE)
    url = f"memory:/{root}"
    r = run_url_backup(repo.repository, url, BackupOptions(), {}, fs=_Unlistable(fs, f"{root}/sub"))
    assert r.errors == [f"{url}/sub: cannot list directory: Access Denied listing {root}/sub"]
    assert r.skipped == 1 and [e.path for e in repo.list_backup(r.id)] == [b"a.txt", b"empty", b"sub"]
    with pytest.raises(ChunkrepoError, match="cannot list: Access Denied"):
        run_url_backup(repo.repository, url, BackupOptions(), {}, fs=_Unlistable(fs, root))
    assert repo.list_backups()[-1].id == r.id


def test_restore_of_a_subtree_to_a_url_and_refusals(repo, url_mem):
    fs, root = url_mem
    fill(fs, root, SOURCE)
    bid = repo.backup([f"memory:/{root}"]).id
    repo.restore(bid, f"memory:/{root}-x", "/sub")
    assert contents(fs, root + "-x") == {"sub/b.bin": SOURCE["sub/b.bin"], "sub/deep/c": SOURCE["sub/deep/c"]}
    with pytest.raises(TargetNotEmpty):
        repo.restore(bid, f"memory:/{root}-x")
    with pytest.raises(NotFound):
        repo.restore(bid, f"memory:/{root}-y", "/nothere")
    assert not fs.exists(root + "-y")
    fs.rm(root + "-x", recursive=True)


@pytest.fixture(params=["memory", "s3"])
def source(request, url_mem):
    """(filesystem, options, root path, URL of a path): memory:// compares mtimes, S3 ETags."""
    if request.param == "memory":
        fs, root = url_mem
        return fs, {}, root, lambda p: f"memory:/{p}"
    fs, opts, bucket = request.getfixturevalue("url_s3")
    return fs, opts, f"{bucket}/data", lambda p: f"s3://{p}"


def test_mirror_deletes_extras_and_its_safety_backup_undoes_it(repo, source):
    fs, opts, root, url_of = source
    fill(fs, root, SOURCE)
    bid = repo.backup([url_of(root)], source_options=opts).id
    target = root + "-site"
    before = {"a.txt": b"old alpha", "extra.txt": b"x", "old/dir/z": b"zz", "sub/deep/c": b"c" * 1000}
    fill(fs, target, before)

    repo.restore(bid, url_of(target), target_options=opts, overwrite=True)    # replaces, deletes nothing
    assert contents(fs, target) == {**before, **SOURCE}
    fs.rm(target, recursive=True)
    fill(fs, target, before)

    res = repo.restore(bid, url_of(target), target_options=opts, mirror=True)
    assert contents(fs, target) == SOURCE
    assert res.deleted == 2 and not fs.exists(f"{target}/old")
    safety = repo.get_backup(res.safety_backup)
    assert safety.paths == [url_of(target)]

    undo = repo.restore(safety.id, url_of(target), target_options=opts, mirror=True)
    assert contents(fs, target) == before
    assert undo.deleted == 2 and undo.safety_backup not in (None, safety.id)
    fs.rm(target, recursive=True)


def _damage_last_chunk(repo, bid, path):
    r = repo.repository
    node = find_node(r, bytes.fromhex(r.resolve_backup(bid).root), path)
    with r.index.read() as v:
        e = v.chunk(node.chunk_ids()[-1])
    with open(os.path.join(r.path, pack_name(e.pack)), "r+b") as f:
        f.seek(e.offset + e.length // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    r.storage.close()   # drop cached descriptors (the file was edited in place)


def test_a_file_that_cannot_be_restored_leaves_no_partial_object(repo, source):
    fs, opts, root, url_of = source
    fill(fs, root, {"broken": rnd(2 << 20, 8), "new-broken": rnd(2 << 20, 9), "ok": b"ok"})
    bid = repo.backup([url_of(root)], source_options=opts).id
    _damage_last_chunk(repo, bid, "/broken")
    _damage_last_chunk(repo, bid, "/new-broken")
    target = root + "-t"
    fill(fs, target, {"broken": b"the old version"})

    res = repo.restore(bid, url_of(target), target_options=opts, overwrite=True)
    assert (res.files, res.skipped, len(res.errors)) == (1, 2, 2)
    assert all("the file was not restored" in e for e in res.errors)
    # an object store still has the old version (the upload was dropped); a filesystem
    # that replaced it on open has nothing there rather than a partial file
    kept = {"broken": b"the old version"} if url_of("x").startswith("s3") else {}
    assert contents(fs, target) == {"ok": b"ok", **kept}
    fs.rm(target, recursive=True)


class _TornReads:
    """A filesystem whose reads of one key write a new version (same size) to the store
    after their first block: a real change in the middle of a read, `times` times."""

    def __init__(self, fs, key, times):
        self.fs, self.key, self.times, self.versions = fs, key, times, 0

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def open(self, path, mode="rb", **kw):
        f = self.fs.open(path, mode, **kw)
        if path.rstrip("/").endswith(self.key) and self.times:
            self.times -= 1
            return _TornFile(f, self)
        return f

    def rewrite(self):
        self.versions += 1
        self.fs.pipe(self.key, bytes([self.versions]) * len(self.fs.cat_file(self.key)))


class _TornFile:
    def __init__(self, f, owner):
        self.f, self.owner, self.first = f, owner, True

    def readinto(self, mv):
        n = self.f.readinto(mv[:65536])
        if self.first:
            self.first = False
            self.owner.rewrite()
        return n

    def tell(self):
        return self.f.tell()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_object_changing_during_read_is_retried_then_kept_from_the_previous_backup(repo, source):
    fs, opts, root, url_of = source
    url = url_of(root)
    key = f"{root}/moving"
    fill(fs, root, {"moving": rnd(300_000, 2), "still": b"s"})

    once = _TornReads(fs, key, 1)        # changes in the first read only: the retry stores it whole
    r1 = run_url_backup(repo.repository, url, BackupOptions(), opts, fs=once)
    assert (r1.files_changed_during_backup, r1.skipped, r1.errors) == (0, 0, [])
    with repo.open_file(r1.id, "/moving") as f:
        assert f.read() == b"\x01" * 300_000 == fs.cat_file(key)

    fs.pipe(key, rnd(300_000, 3))
    always = _TornReads(fs, key, 2)      # changes in both reads: reported, previous version kept
    r2 = run_url_backup(repo.repository, url, BackupOptions(), opts, fs=always)
    assert r2.files_changed_during_backup == 1
    assert r2.bytes_read >= 2 * 65536          # both torn reads happened: they count as read
    assert (r2.files, r2.bytes_total) == (2, 300_001)     # the previous version is what it holds
    assert r2.errors == [f"{url}/moving: changed during the backup: kept the version of the previous backup"]
    with repo.open_file(r2.id, "/moving") as f:
        assert f.read() == b"\x01" * 300_000

    fs.rm(key)
    fill(fs, root, {"new": rnd(300_000, 4)})
    r3 = run_url_backup(repo.repository, url, BackupOptions(), opts, fs=_TornReads(fs, f"{root}/new", 2))
    assert r3.errors == [f"{url}/new: changed during the backup: not stored"]
    assert (r3.files, r3.bytes_total) == (1, 1)        # only what the backup holds
    assert [e.path for e in repo.list_backup(r3.id)] == [b"still"]


# -- S3 -------------------------------------------------------------------------

def test_s3_prefix_backup_restore_and_unchanged_multipart(repo, url_s3, url_moto, tmp_path):
    fs, opts, bucket = url_s3
    files = {"a.txt": b"alpha\n", "sub/b.bin": rnd(2 << 20, 5), "sub/c": b""}
    fill(fs, f"{bucket}/data", files)
    big = rnd(5 << 20, 6) + b"tail"
    multipart_put(url_moto, bucket, "data/multi", [big[:5 << 20], big[5 << 20:]])
    files["multi"] = big
    fill(fs, bucket, {"outside/x": b"not below the prefix"})
    url = f"s3://{bucket}/data"

    r1 = repo.backup([url], source_options=opts)
    assert (r1.files, r1.bytes_read, r1.skipped, r1.errors) == (4, sum(map(len, files.values())), 0, [])
    nodes = {e.path: e.node for e in repo.list_backup(r1.id)}
    fs.invalidate_cache()
    etag = fs.info(f"{bucket}/data/multi")["ETag"]
    assert etag.endswith('-2"') and nodes[b"multi"].etag == etag
    assert all(n.etag for n in nodes.values() if n.kind == "f")

    repo.restore(r1.id, tmp_path / "out")
    assert local_contents(tmp_path / "out") == files
    repo.restore(r1.id, f"s3://{bucket}-copy/data", target_options=opts)
    assert contents(fs, f"{bucket}-copy/data") == files

    assert repo.check(read_data=True).ok
    r2 = repo.backup([url], source_options=opts)
    assert (r2.bytes_read, r2.files_borrowed, r2.parent) == (0, 4, r1.id)
    assert repo.get_backup(r2.id).root == repo.get_backup(r1.id).root

    fs.pipe(f"{bucket}/data/a.txt", b"ALPHA\n")   # the backup's (cached) filesystem must list afresh
    r3 = repo.backup([url], source_options=opts)
    assert (r3.bytes_read, r3.files_borrowed) == (6, 3)


def test_s3_directory_markers_and_an_object_shadowed_by_a_prefix(repo, url_s3):
    fs, opts, bucket = url_s3
    fill(fs, f"{bucket}/data", {"a": b"object a", "a/b": b"b", "d/": b"", "e": b"e"})
    url = f"s3://{bucket}/data"
    r = repo.backup([url], source_options=opts)
    assert r.errors == [f"{url}/a: an object and a prefix share this name: the object is not stored"]
    assert r.skipped == 1
    assert [(e.path, e.node.kind) for e in repo.list_backup(r.id)] == [
        (b"a", "d"), (b"a/b", "f"), (b"d", "d"), (b"e", "f")]


def _pin_last_modified(bucket, key, when):
    """Give an object moto holds a chosen LastModified (moto's state is in this process)."""
    from moto.s3.models import s3_backends
    for account in s3_backends.values():
        for backend in account.values():
            b = backend.buckets.get(bucket)
            if b is not None:
                b.keys[key].last_modified = when
                return
    raise AssertionError("bucket not found in moto")


def test_s3_etag_change_with_same_size_and_mtime_is_read(repo, url_s3):
    fs, opts, bucket = url_s3
    fill(fs, f"{bucket}/data", {"f": b"1" * 100, "g": b"g"})
    url = f"s3://{bucket}/data"
    fs.invalidate_cache()
    old = fs.info(f"{bucket}/data/f")
    repo.backup([url], source_options=opts, clock=later_clock)    # the mtime alone would be trusted
    fs.pipe(f"{bucket}/data/f", b"2" * 100)
    _pin_last_modified(bucket, "data/f", old["LastModified"].replace(tzinfo=None))
    fs.invalidate_cache()
    new = fs.info(f"{bucket}/data/f")
    assert (new["LastModified"], new["size"]) == (old["LastModified"], old["size"])
    assert new["ETag"] != old["ETag"]

    r = repo.backup([url], source_options=opts)
    assert (r.bytes_read, r.files_borrowed) == (100, 1)
    with repo.open_file(r.id, "/f") as f:
        assert f.read() == b"2" * 100


def test_unchanged_rule():
    obj = ObjectInfo(10, 5, '"abc-2"')
    prev = file_node(b"f", obj, b"")
    assert unchanged(prev, obj, 0)                                    # ETag + size: no trust rule
    assert not unchanged(prev, obj._replace(etag='"abd-2"'), 100)     # same size and mtime
    assert not unchanged(prev, obj._replace(st_size=11), 100)
    assert not unchanged(prev, obj._replace(etag=None), 100)          # one side without an ETag
    plain = ObjectInfo(10, 5, None)
    assert unchanged(file_node(b"f", plain, b""), plain, 6)
    assert not unchanged(file_node(b"f", plain, b""), plain, 5)      # mtime too recent to trust
    assert not unchanged(file_node(b"f", plain, b""), plain._replace(st_mtime_ns=4), 6)


def test_errors_are_one_line(repo, url_s3):
    fs, opts, bucket = url_s3
    with pytest.raises(NotFound, match="no such file"):
        repo.backup([f"s3://{bucket}-missing/data"], source_options=opts)
    with pytest.raises(NotFound, match="no such file"):
        repo.backup([f"s3://{bucket}/nothere"], source_options=opts)
    with pytest.raises(ChunkrepoError, match="Protocol not known"):
        repo.backup(["nosuchproto://x/y"])
    with pytest.raises(ChunkrepoError, match="on its own"):
        repo.backup([f"s3://{bucket}/x", "/etc"])


# -- the command line -----------------------------------------------------------

def cli(*args, check=True):
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    p = subprocess.run([sys.executable, "-m", "chunkrepo", *args], capture_output=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {p.stderr.decode()}")
    return p


def test_cli_backup_ls_tar_restore_mirror(tmp_path, url_s3, url_moto):
    fs, _, bucket = url_s3
    files = {"a.txt": b"alpha\n", "sub/b.bin": rnd(100_000, 7)}
    fill(fs, f"{bucket}/data", files)
    repo = str(tmp_path / "repo")
    ep = f"endpoint_url={url_moto}"
    cli("init", "--repo", repo)
    bid = cli("backup", "--repo", repo, f"s3://{bucket}/data/", "--source-option", ep).stdout.decode().split()[-1]

    lines = cli("ls", "--repo", repo, bid).stdout.decode().splitlines()
    assert [ln.split()[-1] for ln in lines] == ["a.txt", "sub/", "sub/b.bin"]
    assert lines[0].startswith("-rw-r--r--") and lines[1].startswith("drwxr-xr-x")
    first = json.loads(cli("ls", "--repo", repo, bid, "/a.txt", "--json").stdout)
    fs.invalidate_cache()
    assert first["etag"] == fs.info(f"{bucket}/data/a.txt")["ETag"]

    tar = cli("tar", "--repo", repo, bid).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        assert t.extractfile("sub/b.bin").read() == files["sub/b.bin"]
        assert t.getmember("a.txt").mode == 0o644
    tvf = subprocess.run(["tar", "tvf", "-"], input=tar, capture_output=True, check=True).stdout.decode()
    assert "-rw-r--r-- 0/0" in tvf and "sub/b.bin" in tvf

    fill(fs, f"{bucket}/site", {"extra": b"e"})
    p = cli("restore", "--repo", repo, bid, "--target", f"s3://{bucket}/site", "--target-option", ep, check=False)
    assert p.returncode == 1 and p.stderr.decode().count("\n") == 1 and "not empty" in p.stderr.decode()
    p = cli("restore", "--repo", repo, bid, "--target", f"s3://{bucket}/site", "--target-option", ep, "--mirror")
    assert "safety backup" in p.stderr.decode()
    assert contents(fs, f"{bucket}/site") == files


@pytest.mark.parametrize("args, message", [
    (["backup", "nosuchproto://x/y"], "Protocol not known"),
    (["backup", "s3://b-missing-bucket-x/data", "--source-option", "{ep}"], "no such file"),
    (["backup", "memory://x", "--source-option", "novalue"], "expected key=value"),
    (["backup", "s3://", "--source-option", "{ep}"], "names no bucket"),
    (["restore", "latest", "--target", "/tmp/x", "--mirror"], "need a URL target"),
])
def test_cli_bad_urls_are_one_line_errors(tmp_path, url_moto, args, message):
    repo = str(tmp_path / "repo")
    cli("init", "--repo", repo)
    if args[0] == "restore":
        (tmp_path / "s").mkdir()
        bid = cli("backup", "--repo", repo, str(tmp_path / "s")).stdout.decode().split()[-1]
        args = [a if a != "latest" else bid for a in args]
    p = cli(args[0], "--repo", repo, *[a.format(ep=f"endpoint_url={url_moto}") for a in args[1:]],
            check=False)
    err = p.stderr.decode()
    assert p.returncode == 1 and err.startswith("chunkrepo: error: ") and err.count("\n") == 1, err
    assert message in err
