"""Damage to the store or the index that rebuild-index, check and opening must survive:
a pack with a damaged trailer (its intact blobs are kept), a damaged or deleted backup
record file (reported, written again from the index, never skipped into garbage), and
an index that is gone (rebuilt when the repository is opened)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from chunkrepo import Repo
from chunkrepo.repository import Repository
from chunkrepo.repository.packs import read_trailer
from chunkrepo.storage import LocalStorage
from chunkrepo.storage.faults import Fault, FaultyStorage
from tests.conftest import age, sha256_tree, write_random


def cli(*args, check=None):
    p = subprocess.run([sys.executable, "-m", "chunkrepo", *args], capture_output=True)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stderr.decode())
    assert b"Traceback" not in p.stderr and b"internal error" not in p.stderr, p.stderr.decode()
    return p


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A repository of two backups whose blobs (60 small files, one of 1.5 MB, their
    directory records) share one pack; copied by each test that damages it."""
    base = tmp_path_factory.mktemp("store")
    src = base / "src"
    (src / "d").mkdir(parents=True)
    for i in range(60):
        write_random(src / "d" / f"f{i:02}", 3000 + 97 * i, seed=i)
    write_random(src / "big", 1_500_000, seed=99)
    for dirpath, _, files in os.walk(src):
        for n in files:
            age(os.path.join(dirpath, n), 30)
    with Repo.init(base / "repo") as repo:
        first = repo.backup([src]).id
        (src / "later").write_text("later\n")
        age(src / "later", 30)
        second = repo.backup([src]).id
    return base / "repo", src, first, second


@pytest.fixture
def copy(pristine, tmp_path):
    path, src, b1, b2 = pristine
    dst = tmp_path / "repo"
    shutil.copytree(path, dst)
    return str(dst), src, b1, b2


def _biggest_pack(path):
    packs = [os.path.join(d, n) for d, _, ns in os.walk(os.path.join(path, "packs")) for n in ns]
    return max(packs, key=os.path.getsize)


def _flip(path, *offsets):
    with open(path, "r+b") as f:
        for at in offsets:
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ 0xFF]))


def _damage_trailer(path, how):
    """Damage the biggest pack: 'flips' = the tester's three bytes (the footer's last
    byte, one in the trailer, one in the first blob); 'zeroed' = its whole trailer and
    footer zeroed as well as the first blob's byte (only the old index knows its blobs)."""
    pack = _biggest_pack(path)
    size = os.path.getsize(pack)
    if how == "flips":
        _flip(pack, size - 1, size - 200, 100)
    else:
        toff = len(b"CRPACK01") + sum(e.length for e in read_trailer(LocalStorage(path), os.path.relpath(
            pack, path)))
        with open(pack, "r+b") as f:
            f.seek(toff)
            f.write(bytes(size - toff))
        _flip(pack, 100)
    return pack


def _repaired(path):
    p = cli("check", "--repair", "--read-data", "--json", "--repo", path, check=1)
    return json.loads(p.stdout)["repair"]


# -- A: a damaged trailer ------------------------------------------------------------------------

@pytest.mark.parametrize("how,old_index", [("flips", True), ("flips", False), ("zeroed", True)])
def test_rebuild_keeps_the_verified_blobs_of_a_pack_with_a_damaged_trailer(copy, tmp_path, how, old_index):
    path, src, b1, b2 = copy
    _damage_trailer(path, how)
    baseline = str(tmp_path / "baseline")      # the same damage, repaired without a rebuild
    shutil.copytree(path, baseline)
    want = _repaired(baseline)
    assert want["blobs_lost"] == 1 and want["blobs_kept"] > 60
    if not old_index:
        shutil.rmtree(os.path.join(path, "index"))
    p = cli("rebuild-index", "--repo", path, check=1)
    err = p.stderr.decode()
    assert "damaged trailer" in err and "verified and were adopted" in err, err
    assert not [n for n in os.listdir(path) if n.startswith("index.")]
    p = cli("check", "--read-data", "--repo", path, check=1)
    err = p.stderr.decode()
    assert "trailer unreadable" in err and "check --repair marked" not in err, err
    got = _repaired(path)
    if old_index:
        assert got["blobs_kept"] == want["blobs_kept"] and got["damaged"] == want["damaged"]
        assert len(got["damaged"][b1]) == 1          # one file lost data, not the whole pack
    else:       # the trailer alone: the blob whose entry holds the flipped byte is lost too
        assert got["blobs_kept"] == want["blobs_kept"] - 1 and 1 <= len(got["damaged"][b1]) <= 2
    cli("check", "--read-data", "--repo", path, check=1)    # the backups stay marked damaged
    out = tmp_path / "out"
    cli("restore", "--repo", path, b2, "--target", str(out))
    intact = {p: d for p, d in sha256_tree(src).items() if p not in got["damaged"][b2]}
    restored = {"/" + os.path.relpath(p, out): d for p, d in sha256_tree(out).items()}
    assert {p: restored.get(p) for p in intact} == intact


def test_a_rebuild_without_the_old_index_says_when_no_blob_could_be_verified(copy):
    path, _, b1, b2 = copy
    _damage_trailer(path, "zeroed")
    shutil.rmtree(os.path.join(path, "index"))
    p = cli("rebuild-index", "--repo", path, check=1)
    assert "none of its blobs could be verified" in p.stderr.decode()
    p = cli("check", "--repo", path, check=1)
    assert b"was lost: its only stored copy was found damaged or missing" in p.stderr


# -- B: a damaged or deleted backup record file ---------------------------------------------------

def test_check_reports_a_damaged_record_file_and_repair_writes_it_again(copy):
    path, _, b1, b2 = copy
    name = os.path.join(path, "backups", b1)
    good = open(name, "rb").read()
    with open(name, "wb") as f:
        f.write(b"garbage\n")
    p = cli("check", "--read-data", "--repo", path, check=1)
    assert f"its record file backups/{b1} is damaged".encode() in p.stderr
    p = cli("check", "--repair", "--repo", path, check=0)
    assert b"written again from the index" in p.stderr
    assert open(name, "rb").read() == good
    os.remove(name)                       # deleted: the same
    p = cli("check", "--repo", path, check=1)
    assert f"its record file backups/{b1} is missing".encode() in p.stderr
    cli("check", "--repair", "--repo", path, check=0)
    assert open(name, "rb").read() == good
    cli("check", "--read-data", "--repo", path, check=0)


def test_rebuild_takes_a_damaged_record_from_the_old_index(copy):
    path, _, b1, b2 = copy
    name = os.path.join(path, "backups", b1)
    good = open(name, "rb").read()
    with open(name, "wb") as f:
        f.write(b"garbage\n")
    p = cli("rebuild-index", "--repo", path, check=1)
    assert f"backup {b1}: its record file is damaged; registered from the old index".encode() in p.stderr
    assert not [n for n in os.listdir(path) if n.startswith("index.")]
    p = cli("list-backups", "--repo", path, check=0)
    assert b1.encode() in p.stdout and b2.encode() in p.stdout
    cli("check", "--repair", "--repo", path, check=0)
    assert open(name, "rb").read() == good
    cli("check", "--read-data", "--repo", path, check=0)


def _packs(path):
    return sorted((d, n, os.path.getsize(os.path.join(d, n)))
                  for d, _, ns in os.walk(os.path.join(path, "packs")) for n in ns)


def test_a_damaged_record_without_a_copy_stops_rebuild_and_prune(copy):
    path, _, b1, b2 = copy
    with Repo(path) as repo:              # the old index lacks the record too
        ix = repo.repository.index
        with ix.env.begin(write=True) as txn:
            txn.delete(b1.encode(), db=ix.backups)
    with open(os.path.join(path, "backups", b1), "wb") as f:
        f.write(b"garbage\n")
    before = cli("list-backups", "--repo", path, check=0).stdout
    packs = _packs(path)
    p = cli("check", "--repo", path, check=1)
    assert f"backups/{b1} is damaged".encode() in p.stderr and b"cannot be registered" in p.stderr
    for args in (("rebuild-index",), ("prune",), ("backup", str(copy[1]))):
        p = cli(*args, "--repo", path, check=1)
        assert p.stderr.decode().count("\n") <= 3 and f"backups/{b1} is damaged".encode() in p.stderr
        assert not [n for n in os.listdir(path) if n.startswith("index.")]
        # the old index is back in place, not a partial one; nothing was freed
        assert cli("list-backups", "--repo", path, check=0).stdout == before
        assert _packs(path) == packs
    shutil.rmtree(os.path.join(path, "index"))      # no index at all: opening refuses likewise
    p = cli("list-backups", "--repo", path, check=1)
    assert f"backups/{b1} is damaged".encode() in p.stderr
    assert not os.path.exists(os.path.join(path, "index"))
    os.rename(os.path.join(path, "backups", b1), os.path.join(path, "bad-record"))   # given up
    p = cli("list-backups", "--repo", path, check=0)
    assert b2.encode() in p.stdout and b1.encode() not in p.stdout


# -- C: the index is gone -------------------------------------------------------------------------

def test_an_absent_index_is_rebuilt_when_the_repository_is_opened(copy):
    path, src, b1, b2 = copy
    with Repo(path) as repo:
        want = [b.id for b in repo.list_backups()]
    shutil.rmtree(os.path.join(path, "index"))
    p = cli("list-backups", "--repo", path, check=0)
    assert p.stderr.decode().count("the index is missing: rebuilding it from the store") == 1
    assert [line.split()[0] for line in p.stdout.decode().splitlines()] == want
    p = cli("check", "--json", "--repo", path, check=0)
    d = json.loads(p.stdout)
    assert d["ok"] and d["backups"] == 2 and d["unreferenced_packs"] == 0 and p.stderr == b""
    shutil.rmtree(os.path.join(path, "index"))
    p = cli("ls", "--repo", path, "latest", str(src / "big"), check=0)
    assert b"big" in p.stdout


def test_opening_a_healthy_or_new_repository_does_not_list_the_store(copy, tmp_path):
    path = copy[0]
    no_listing = [Fault("list", "packs"), Fault("list", "backups")]
    Repository(path, wrap_storage=lambda s: FaultyStorage(s, no_listing)).close()
    assert all(f.hits == 0 for f in no_listing)
    Repo.init(tmp_path / "new").close()
    shutil.rmtree(tmp_path / "new" / "index")
    with Repo(tmp_path / "new") as repo:           # an empty store: nothing to rebuild, no warning
        assert repo.list_backups() == []
    shutil.rmtree(os.path.join(path, "index"))     # absent: the store is listed (and the fault fires)
    with pytest.raises(Exception, match="listing"):
        Repository(path, wrap_storage=lambda s: FaultyStorage(s, [Fault("list", "packs", kind="EIO")]))
    assert not os.path.exists(os.path.join(path, "index"))
