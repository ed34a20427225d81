"""A damaged local index (data.mdb overwritten in place) is one error line with the
rebuild-index advice, never an internal error; a backup stops at it; rebuild-index mends it."""

import json
import os
import subprocess
import sys
import uuid

import lmdb
import pytest

from chunkrepo import Repo
from chunkrepo.errors import IndexDamaged
from tests.conftest import age, write_random

ADVICE = "run 'chunkrepo rebuild-index'"


def run(*args, prefix=()):
    p = subprocess.run([*prefix, sys.executable, "-m", "chunkrepo", *args], capture_output=True)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def assert_damage_reported(rc, err, index_dir):
    """One line (check: one of its errors) names the damaged index and the advice."""
    assert rc == 1, err
    assert "internal error" not in err and "Traceback" not in err
    assert any(line.startswith(("chunkrepo: error: the index", "error: check stopped early: the index"))
               and f"the index {index_dir} is damaged (" in line and ADVICE in line
               for line in err.splitlines()), err


@pytest.fixture
def backed_up(tmp_path):
    """A repository with one backup of a small tree (via the CLI) and its root record's id."""
    src = tmp_path / "src"
    for d in ("a", "b/c"):
        (src / d).mkdir(parents=True)
    for i, name in enumerate(("a/one", "a/two", "b/three", "b/c/four", "five")):
        write_random(src / name, 20_000 + 5_000 * i, seed=i)
        age(src / name)
    repo = tmp_path / "repo"
    assert run("init", "--repo", str(repo))[0] == 0
    rc, out, err = run("backup", "--repo", str(repo), str(src))
    assert rc == 0, err
    rc, out, err = run("list-backups", "--repo", str(repo), "--json")
    assert rc == 0, err
    root = bytes.fromhex(json.loads(out)[0]["root"])
    return repo, src, root


def damage_page_holding(index_dir, db_name: bytes, key: bytes) -> int:
    """Zero the header of the live page of database db_name that holds key (the page
    flags then name no page type: liblmdb reports MDB_CORRUPTED when it meets it).
    Free pages may hold stale copies of the key: each candidate is tried in turn."""
    path = os.path.join(index_dir, "data.mdb")
    with open(path, "rb") as f:
        data = f.read()
    page_size = 4096
    at = -1
    with open(path, "r+b") as f:
        while True:
            at = data.index(key, at + 1)     # ValueError (test error) if no live page holds it
            page = at // page_size
            f.seek(page * page_size)
            f.write(bytes(16))
            f.flush()
            if not _finds(index_dir, db_name, key):
                return page
            f.seek(page * page_size)
            f.write(data[page * page_size:page * page_size + 16])
            f.flush()


def _finds(index_dir, db_name, key) -> bool:
    env = lmdb.open(str(index_dir), max_dbs=20, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return txn.get(key, db=env.open_db(db_name, txn=txn, create=False)) is not None
    except lmdb.Error:
        return False
    finally:
        env.close()


def test_damaged_record_entry_stops_ls_check_restore_and_backup(backed_up, tmp_path):
    repo, src, root = backed_up
    index_dir = repo / "index"
    damage_page_holding(index_dir, b"trees", root)
    for args in (("ls", "latest"), ("check",), ("restore", "latest", "--target", str(tmp_path / "out"))):
        rc, out, err = run(*args, "--repo", str(repo))
        assert_damage_reported(rc, err, index_dir)
    rc, out, err = run("check", "--json", "--repo", str(repo))
    assert rc == 1 and ADVICE in out          # check reports it among its errors
    # a backup reads the previous backup's root record: it stops there, registering nothing
    (src / "new").write_bytes(b"new file\n")
    rc, out, err = run("backup", "--repo", str(repo), str(src))
    assert_damage_reported(rc, err, index_dir)
    assert len(os.listdir(repo / "backups")) == 1
    rc, out, err = run("rebuild-index", "--repo", str(repo))
    assert rc == 0, err
    rc, out, err = run("backup", "--repo", str(repo), str(src))
    assert rc == 0, err
    rc, out, err = run("check", "--read-data", "--repo", str(repo))
    assert rc == 0 and "no errors were found" in err, err


def test_damaged_main_database_fails_at_open(backed_up, tmp_path):
    repo, src, root = backed_up
    index_dir = repo / "index"
    with open(index_dir / "data.mdb", "r+b") as f:     # every page but the two meta pages
        f.seek(2 * 4096)
        f.write(bytes(os.path.getsize(index_dir / "data.mdb") - 2 * 4096))
    for args in (("list-backups",), ("ls", "latest"), ("check",), ("backup", str(src))):
        rc, out, err = run(*args, "--repo", str(repo))
        assert_damage_reported(rc, err, index_dir)
    rc, out, err = run("rebuild-index", "--repo", str(repo))
    assert rc == 0, err
    rc, out, err = run("ls", "latest", "--repo", str(repo))
    assert rc == 0 and "five" in out, err


def test_damaged_copy_of_a_directory_record(backed_up, tmp_path):
    """A record's bytes in the index (treedata) overwritten: the copy fails its hash."""
    repo, src, root = backed_up
    index_dir = repo / "index"
    env = lmdb.open(str(index_dir), max_dbs=20)
    with env.begin(write=True) as txn:
        db = env.open_db(b"treedata", txn=txn, create=False)
        rec = bytes(txn.get(root, db=db))
        txn.put(root, rec[:len(rec) // 2] + b"\xc1" * (len(rec) - len(rec) // 2), db=db)
    env.close()
    rc, out, err = run("ls", "latest", "--repo", str(repo))
    assert_damage_reported(rc, err, index_dir)
    assert f"directory record {root.hex()} fails its hash" in err


def test_damaged_cache_of_a_remote_repository(tmp_path, monkeypatch, caplog):
    """A remote repository's index is a local cache: rebuild-index replaces a damaged one
    (emptying it would walk its damaged pages), and one too damaged to open is replaced."""
    fsspec = pytest.importorskip("fsspec")
    monkeypatch.setenv("CHUNKREPO_INDEX_CACHE", str(tmp_path / "cache"))
    url = f"memory://index-damage-{uuid.uuid4().hex[:12]}/repo"
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    write_random(src / "d" / "f", 50_000)
    age(src / "d" / "f")
    try:
        with Repo.init(url) as repo:
            rec = repo.get_backup(repo.backup([src]).id)
            cache = repo.repository.cache.index_path
        damage_page_holding(cache, b"trees", bytes.fromhex(rec.root))
        with Repo(url) as repo:
            with pytest.raises(IndexDamaged, match="rebuild-index"):
                list(repo.list_backup(rec.id))
        Repo.rebuild_index(url)
        with Repo(url) as repo:
            assert [e.path for e in repo.list_backup(rec.id) if e.path.endswith(b"/d/f")]
        with open(os.path.join(cache, "data.mdb"), "r+b") as f:   # the main database too
            f.seek(2 * 4096)
            f.write(bytes(os.path.getsize(os.path.join(cache, "data.mdb")) - 2 * 4096))
        with Repo(url) as repo:
            assert [b.id for b in repo.list_backups()] == [rec.id]
            assert repo.check().ok
        assert "is damaged: it is refilled from the store" in caplog.text
    finally:
        fsspec.filesystem("memory").rm(url.split("://")[1].split("/")[0], recursive=True)
