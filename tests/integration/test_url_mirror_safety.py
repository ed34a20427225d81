"""A URL restore never touches the repository, a URL backup leaves it out, names with an
empty segment ('//') are reported and never mirrored away, and the safety backup's id
is known before the target changes.  (moto S3, memory://, file://; fixtures in conftest.)"""

import os
import subprocess
import sys

import pytest

from chunkrepo import Repo
from chunkrepo.errors import ChunkrepoError
from chunkrepo.ops.restore_fsspec import restore_to_url
from chunkrepo.ops.url_place import place, same_store

pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")


def _client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")


def _keys(endpoint, bucket) -> dict:
    """key -> bytes of every object in the bucket (no fsspec cache in the way)."""
    c = _client(endpoint)
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def _put(endpoint, bucket, objects: dict):
    c = _client(endpoint)
    for k, v in objects.items():
        c.put_object(Bucket=bucket, Key=k, Body=v)


def _tree(root) -> dict:
    """relative path -> bytes of every file below root (but LMDB's lock file, which any
    reader of a local repository writes)."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if f == "lock.mdb":
                continue
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def test_restore_into_an_s3_prefix_holding_the_repository_is_refused(tmp_path, url_s3, url_moto):
    _, opts, bucket = url_s3
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"local")
    with Repo.init(f"s3://{bucket}/repo", storage_options=opts) as repo:
        local = repo.backup([str(tmp_path / "d")])
        _put(url_moto, bucket, {"site/index.html": b"<html>"})
        whole = repo.backup([f"s3://{bucket}"], source_options=opts)
        # the repository's own objects are not in a backup of the bucket that holds it
        assert [e.path for e in repo.list_backup(whole.id)] == [b"site", b"site/index.html"]
        assert whole.errors == []
        before = _keys(url_moto, bucket)
        for target in (f"s3://{bucket}", f"s3a://{bucket}/", f"s3://{bucket}/repo/sub"):
            for kw in ({"mirror": True}, {"overwrite": True}, {}):
                with pytest.raises(ChunkrepoError, match="holds the repository .* or lies inside it: refused"):
                    repo.restore(whole.id, target, "/site", target_options=opts, **kw)
        assert _keys(url_moto, bucket) == before
        assert len(repo.list_backups()) == 2          # no safety backup either
        # another prefix of the same bucket is fine, and so is the same name on another endpoint
        repo.restore(whole.id, f"s3://{bucket}/repo2", "/site", target_options=opts)
        assert _keys(url_moto, bucket)["repo2/site/index.html"] == b"<html>"
        assert same_store(place(f"s3://{bucket}", opts),
                          place(f"s3://{bucket}", dict(opts, endpoint_url="http://elsewhere:9000"))) is False
    with Repo(f"s3://{bucket}/repo", storage_options=opts) as repo:     # intact and usable
        assert repo.check(read_data=True).ok
        repo.restore(local.id, tmp_path / "out")
        assert list(_tree(tmp_path / "out").values()) == [b"local"]
        repo.backup([str(tmp_path / "d")])


def cli(*args, check=True):
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    p = subprocess.run([sys.executable, "-m", "chunkrepo", *args], capture_output=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {p.stderr.decode()}")
    return p


def test_file_url_mirror_over_a_local_repository_is_refused(tmp_path):
    fl = tmp_path / "fl"
    (fl / "site").mkdir(parents=True)
    (fl / "site" / "index.html").write_bytes(b"<html>")
    repo = str(fl / "repo")
    cli("init", "--repo", repo)
    bid = cli("backup", "--repo", repo, f"file://{fl}").stdout.decode().split()[-1]
    before = _tree(fl)
    p = cli("restore", "--repo", repo, bid, "/site", "--target", f"file://{fl}", "--mirror", check=False)
    err = p.stderr.decode()
    assert p.returncode == 1 and err.count("\n") == 1 and "holds the repository" in err, err
    via_link = tmp_path / "link"
    via_link.symlink_to(fl)                                   # the same place by another name
    p = cli("restore", "--repo", repo, bid, "/site", "--target", f"file://{via_link}/repo", "--overwrite",
            check=False)
    assert p.returncode == 1 and "holds the repository" in p.stderr.decode()
    assert _tree(fl) == before
    assert cli("check", "--repo", repo, "--read-data").returncode == 0
    assert len(cli("list-backups", "--repo", repo).stdout.decode().splitlines()) >= 1
    cli("restore", "--repo", repo, bid, "--target", str(tmp_path / "out"))
    assert _tree(tmp_path / "out") == {"site/index.html": b"<html>"}


EMPTY_SEGMENT = {"w2/logs//2026/app.log": b"app", "w2/logs///x": b"x", "w2/logs/ok.txt": b"ok",
                 "w2/top": b"top", "w2/m/": b"marker with data", "w2/m/in": b"in"}


def test_names_with_an_empty_segment_are_reported_and_never_mirrored_away(repo, url_s3, url_moto):
    _, opts, bucket = url_s3
    _put(url_moto, bucket, EMPTY_SEGMENT)
    url = f"s3://{bucket}/w2"
    r = repo.backup([url], source_options=opts)
    assert sorted(r.errors) == [
        f"{url}/logs///x: a name with an empty path segment ('//'): not stored",
        f"{url}/logs//2026/app.log: a name with an empty path segment ('//'): not stored",
        f"{url}/m/: a directory marker object holding data: not stored"]
    assert r.skipped == 3
    assert [e.path for e in repo.list_backup(r.id)] == [b"logs", b"logs/ok.txt", b"m", b"m/in", b"top"]

    src = repo.backup([str(__file__)])       # any backup: the mirror must refuse before deleting
    before = _keys(url_moto, bucket)
    with pytest.raises(ChunkrepoError, match="could not store every object .*nothing was mirrored"):
        repo.restore(src.id, url, target_options=opts, mirror=True)
    assert _keys(url_moto, bucket) == before


def test_cli_backup_of_empty_segment_names_exits_3_naming_each(tmp_path, url_s3, url_moto):
    _, _, bucket = url_s3
    _put(url_moto, bucket, {"w2/logs//2026/app.log": b"app", "w2/ok": b"ok"})
    repo = str(tmp_path / "repo")
    cli("init", "--repo", repo)
    p = cli("backup", "--repo", repo, f"s3://{bucket}/w2", "--source-option", f"endpoint_url={url_moto}",
            check=False)
    err = p.stderr.decode()
    assert p.returncode == 3, err
    assert f"s3://{bucket}/w2/logs//2026/app.log: a name with an empty path segment ('//'): not stored" in err


def test_a_mirror_leaves_what_arrived_after_its_safety_backup(repo, url_mem):
    fs, root = url_mem
    for k, v in {"keep": b"k", "old": b"o"}.items():
        fs.pipe(f"{root}/{k}", v)
    src = f"{root}-src"
    fs.pipe(f"{src}/keep", b"new")
    bid = repo.backup([f"memory://{src}"]).id
    seen = []

    def late_arrival(safety_id):       # an object written between the safety backup and the mirror
        seen.append(safety_id)
        fs.pipe(f"{root}/late", b"late")

    res = repo.restore(bid, f"memory://{root}", mirror=True, on_safety_backup=late_arrival)
    assert seen == [res.safety_backup]
    fs.invalidate_cache()
    assert sorted(fs.find(root)) == [f"{root}/keep", f"{root}/late"]
    assert (res.deleted, res.errors) == (1, [])
    fs.rm(src, recursive=True)


class _LaggingListing:
    """A filesystem whose directory listing (ls) does not show one object yet while a
    recursive listing (find) does: a store whose listings lag, as S3's once did."""

    def __init__(self, fs, hidden):
        self.fs, self.hidden = fs, hidden

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def ls(self, path, detail=True, **kw):
        return [i for i in self.fs.ls(path, detail=detail, **kw)
                if (i["name"] if detail else i) != self.hidden]


def test_a_mirror_deletes_nothing_its_safety_backup_lacks(repo, url_mem):
    fs, root = url_mem
    for k in ("old", "unseen"):
        fs.pipe(f"{root}/{k}", k.encode())
    fs.pipe(f"{root}-src/new", b"new")
    bid = repo.backup([f"memory://{root}-src"]).id
    res = restore_to_url(repo.repository, bytes.fromhex(repo.get_backup(bid).root), f"memory://{root}",
                         mirror=True, fs=_LaggingListing(fs, f"{root}/unseen"))
    assert [e.path for e in repo.list_backup(res.safety_backup)] == [b"old"]
    fs.invalidate_cache()
    assert sorted(fs.find(root)) == [f"{root}/new", f"{root}/unseen"]
    assert (res.deleted, res.errors) == (1, [f"memory://{root}/unseen: not in the safety backup: not deleted"])
    fs.rm(f"{root}-src", recursive=True)


def test_the_safety_backup_id_is_known_before_the_target_changes(repo, url_mem):
    fs, root = url_mem
    fs.pipe(f"{root}/a", b"target's a")
    fs.pipe(f"{root}/b", b"target's b")
    src = f"{root}-src"
    fs.pipe(f"{src}/a", b"backup's a")
    bid = repo.backup([f"memory://{src}"]).id

    class Stop(Exception):
        pass

    def interrupt(safety_id):
        fs.invalidate_cache()
        assert {p: fs.cat_file(p) for p in fs.find(root)} == {f"{root}/a": b"target's a",
                                                              f"{root}/b": b"target's b"}
        raise Stop(safety_id)

    with pytest.raises(Stop) as stopped:
        repo.restore(bid, f"memory://{root}", mirror=True, on_safety_backup=interrupt)
    safety_id = stopped.value.args[0]
    assert repo.get_backup(safety_id).paths == [f"memory://{root}"]
    fs.rm(src, recursive=True)


def test_cli_prints_the_safety_backup_id_before_writing(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_bytes(b"old")
    src = tmp_path / "s"
    src.mkdir()
    (src / "new").write_bytes(b"new")
    repo = str(tmp_path / "repo")
    cli("init", "--repo", repo)
    bid = cli("backup", "--repo", repo, f"file://{src}").stdout.decode().split()[-1]
    # a target file that cannot be replaced stops the restore after the safety backup
    (target / "new").mkdir()
    (target / "new" / "x").write_bytes(b"x")
    p = cli("restore", "--repo", repo, bid, "--target", f"file://{target}", "--mirror", check=False)
    err = p.stderr.decode()
    assert p.returncode != 0 and "safety backup of the target before the mirror:" in err, err
    safety = err.split("mirror: ")[1].split()[0]
    ids = cli("list-backups", "--repo", repo).stdout.decode()
    assert safety in ids
