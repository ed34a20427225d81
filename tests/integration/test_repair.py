"""check --repair: damage a disk can do (a pack deleted, truncated, with flipped bytes; refcounts
that drifted) is repaired on real repositories; backups that lost data are marked damaged and
become whole again when the next backup of the unchanged files stores the lost chunks."""

import hashlib
import json
import os
import tarfile
import signal
import struct
import subprocess
import sys

import pytest

from chunkrepo import Repo
from chunkrepo.errors import RepoLocked
from chunkrepo.repository.config import Config
from chunkrepo.repository.crash_points import REPAIR_POINTS
from chunkrepo.repository.lock import WriterLock
from chunkrepo.repository.packs import pack_name
from chunkrepo.storage.faults import Fault, FaultyStorage
from tests.conftest import age, sha256_tree, write_random


def cli(*args, check=None):
    p = subprocess.run([sys.executable, "-m", "chunkrepo", *args], capture_output=True)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stderr.decode())
    return p


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    write_random(src / "a.bin", 3 << 20, seed=21)
    write_random(src / "d" / "b.bin", 2 << 20, seed=22)
    for i in range(20):
        (src / "d" / f"small{i}.txt").write_text(f"file {i}\n" * (i + 1))
    for dirpath, _, files in os.walk(src):
        for n in files:
            age(os.path.join(dirpath, n), 30)
    repo = Repo.init(tmp_path / "repo", Config(pack_size=1 << 20))
    first = repo.backup([src])
    second = repo.backup([src])
    yield repo, src, first.id, second.id
    repo.close()



def _pack_of(repo, bid, path, which=0):
    node = next(iter(repo.list_backup(bid, path))).node
    with repo.repository.index.read() as v:
        e = v.chunk(node.chunk_ids()[which])
    return os.path.join(repo.path, pack_name(e.pack)), e


def _restored(repo, bid, tmp_path, name):
    out = tmp_path / name
    res = repo.restore(bid, out)
    got = {}
    for dirpath, _, files in os.walk(out):
        for n in files:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                got["/" + os.path.relpath(p, out)] = hashlib.sha256(f.read()).digest()
    return res, got


def _heal_and_verify(repo, src, b1, b2, damaged_paths, tmp_path):
    """The next backup re-reads only the damaged files; then everything is whole again."""
    want = sha256_tree(src)
    res = repo.backup([src])
    sizes = sum(os.path.getsize(p) for p in damaged_paths)
    assert res.bytes_read == sizes > 0           # only the affected files were read
    assert res.files_borrowed == len(want) - len(damaged_paths)
    rep = repo.check(read_data=True)
    assert rep.ok, rep.errors
    assert rep.lost_blobs == 0 and rep.marked_damaged == []
    assert repo.damaged_backups() == {}
    for bid in (b1, b2):
        _, got = _restored(repo, bid, tmp_path, f"healed-{bid}")
        assert {p: d for p, d in got.items() if p.startswith(str(src))} == want


def test_deleted_pack_is_repaired_and_healed_by_the_next_backup(setup, tmp_path):
    repo, src, b1, b2 = setup
    path, _ = _pack_of(repo, b1, str(src / "a.bin"), 1)
    os.remove(path)
    found = repo.check()
    assert not found.ok and set(found.damaged) == {b1, b2}
    damaged_paths = found.damaged[b2]
    assert str(src / "a.bin") in damaged_paths

    p = cli("check", "--repair", "--repo", repo.path, check=1)
    err = p.stderr.decode()
    assert "repair: pack" in err and f"backup {b1} marked damaged" in err
    assert str(src / "a.bin") in err and "remain damaged" in err
    p = cli("check", "--repair", "--repo", repo.path, check=1)     # again: nothing more to do
    assert "repair: pack" not in p.stderr.decode()
    listing = cli("list-backups", "--repo", repo.path, check=0).stdout.decode()
    assert listing.count("DAMAGED") == 2
    js = json.loads(cli("list-backups", "--json", "--repo", repo.path, check=0).stdout)
    assert all(d["damaged"]["paths"] == damaged_paths for d in js)

    rep = repo.check()
    assert not rep.ok and rep.lost_blobs >= 1 and sorted(rep.marked_damaged) == sorted([b1, b2])
    assert all("lost" in e for e in rep.errors), rep.errors
    # the undamaged files of a damaged backup restore; a damaged one fails naming its path
    res, got = _restored(repo, b1, tmp_path, "partial")
    want = sha256_tree(src)
    for p, d in want.items():
        if p in damaged_paths:
            assert p not in got
        else:
            assert got[p] == d
    assert any(str(src / "a.bin") in e and "lost" in e for e in res.errors)
    with pytest.raises(Exception, match="lost"):
        with repo.open_file(b1, str(src / "a.bin")) as f:
            f.read()
    _heal_and_verify(repo, src, b1, b2, damaged_paths, tmp_path)


def test_tar_and_restore_name_a_one_chunk_file_whose_chunk_was_lost(setup, tmp_path):
    """A one-chunk file's chunk is looked up by the read task, not the walk: a lost one
    still fails the tar naming the file, and restore skips just the damaged files."""
    repo, src, b1, _ = setup
    small = src / "d" / "small7.txt"
    path, _ = _pack_of(repo, b1, str(small))
    os.remove(path)
    cli("check", "--repair", "--repo", repo.path, check=1)
    damaged = repo.check().damaged[b1]
    assert str(small) in damaged
    p = cli("tar", "--repo", repo.path, b1, str(small), "-o", str(tmp_path / "f.tar"), check=1)
    err = p.stderr.decode().splitlines()
    assert len(err) == 2 and str(small) in err[0] and "was lost" in err[0], err
    assert err[0].endswith("left out of the archive") and err[1].startswith("chunkrepo: error: the archive was")
    with tarfile.open(tmp_path / "f.tar") as t:      # the one file asked for is left out
        assert t.getmembers() == []
    res, got = _restored(repo, b1, tmp_path, "partial")
    assert str(small) not in got and any(str(small) in e and "lost" in e for e in res.errors)
    want = sha256_tree(src)
    assert {p: d for p, d in got.items() if p.startswith(str(src))} == \
        {p: d for p, d in want.items() if p not in damaged}


def test_truncated_pack_keeps_its_good_blobs(setup, tmp_path):
    repo, src, b1, b2 = setup
    path, e = _pack_of(repo, b1, str(src / "d" / "b.bin"), 0)
    assert e.offset > 8                     # another blob lies before it in the pack
    with open(path, "r+b") as f:
        f.truncate(e.offset + e.length // 2)    # the blobs before it survive; it and the trailer do not
    found = repo.check()
    assert not found.ok and any("truncated" in x for x in found.errors)
    rep = repo.check(repair=True)
    r = rep.repair
    assert r.packs_salvaged == 1 and r.blobs_kept >= 1 and r.blobs_lost >= 1 and r.unrepaired
    assert not os.path.exists(path)          # the damaged file is gone once no reader needs it
    damaged_paths = r.damaged[b2]
    assert str(src / "d" / "b.bin") in damaged_paths and r.damaged[b1] == damaged_paths
    _heal_and_verify(repo, src, b1, b2, damaged_paths, tmp_path)


def test_flipped_bytes_are_found_by_read_data_and_repaired(setup, tmp_path):
    repo, src, b1, b2 = setup
    path, e = _pack_of(repo, b1, str(src / "a.bin"), 0)
    with open(path, "r+b") as f:
        f.seek(e.offset + e.length // 2)
        b = f.read(4)
        f.seek(e.offset + e.length // 2)
        f.write(bytes(x ^ 0xFF for x in b))
    assert repo.check().ok               # structure is fine: only reading finds it
    rep = repo.check(read_data=True, repair=True)
    assert not rep.ok and rep.repair.packs_salvaged == 1
    assert rep.repair.damaged[b1] == [str(src / "a.bin")]
    assert set(repo.damaged_backups()) == {b1, b2}
    _heal_and_verify(repo, src, b1, b2, [str(src / "a.bin")], tmp_path)


def test_forget_and_prune_of_damaged_backups(setup, tmp_path):
    repo, src, b1, b2 = setup
    path, _ = _pack_of(repo, b1, str(src / "a.bin"), 0)
    os.remove(path)
    assert repo.check(repair=True).repair.unrepaired
    res = repo.forget([b1])
    assert res.removed == [b1] and set(repo.damaged_backups()) == {b2}
    repo.forget([b2], prune=True)
    rep = repo.check(read_data=True)
    assert rep.ok, rep.errors
    assert rep.lost_blobs == 0 and rep.marked_damaged == [] and rep.backups == 0
    after = repo.backup([src])                # everything is read and stored again
    assert after.bytes_read == sum(os.path.getsize(p) for p in sha256_tree(src))
    assert repo.check(read_data=True).ok


def test_lost_directory_record_is_stored_again(setup, tmp_path):
    """A pack holding a directory record is deleted and the index's cached copy is bad too:
    the record is lost (its files are damaged), the next backup stores it again."""
    repo, src, b1, b2 = setup
    ix = repo.repository.index
    tid = next(iter(repo.list_backup(b1, str(src / "d")))).node.subtree
    with ix.read() as v:
        pack = v.tree(tid).pack
    with ix.env.begin(write=True) as txn:
        txn.put(tid, b"not the record", db=ix.treedata)
    os.remove(os.path.join(repo.path, pack_name(pack)))
    r = repo.check(repair=True).repair
    assert r.blobs_lost >= 1 and r.damaged == {b1: [str(src / "d")], b2: [str(src / "d")]}
    assert any("lost" in e for e in repo.check().errors)
    res = repo.backup([src])
    assert res.bytes_read >= os.path.getsize(src / "d" / "b.bin")
    rep = repo.check(read_data=True)
    assert rep.ok and rep.marked_damaged == [], rep.errors
    want = sha256_tree(src)
    for bid in (b1, b2):
        res, got = _restored(repo, bid, tmp_path, f"r-{bid}")
        assert res.errors == [] and {p: d for p, d in got.items() if p.startswith(str(src))} == want


def _raw_entry(index, db, key, fn):
    with index.env.begin(write=True) as txn:
        v = txn.get(key, db=db)
        fields = list(struct.unpack("<16sQIIQ", v))
        fields[4] = fn(fields[4])
        txn.put(key, struct.pack("<16sQIIQ", *fields), db=db)


def test_drifted_refcounts_are_rewritten(setup):
    repo, src, b1, b2 = setup
    ix = repo.repository.index
    node = next(iter(repo.list_backup(b1, str(src / "a.bin")))).node
    _raw_entry(ix, ix.chunks, node.chunk_ids()[0], lambda rc: rc + 3)
    root = bytes.fromhex(repo.get_backup(b1).root)
    _raw_entry(ix, ix.trees, root, lambda rc: 0)       # the garbage set now disagrees too
    found = repo.check()
    assert sum("reference count" in e for e in found.errors) == 2
    p = cli("check", "--repair", "--repo", repo.path, check=0)
    err = p.stderr.decode()
    assert "rewrote 2 reference counts" in err and "repair complete" in err
    rep = repo.check(read_data=True)
    assert rep.ok, rep.errors
    p = cli("check", "--repair", "--repo", repo.path, check=0)
    assert "nothing to repair" in p.stderr.decode()


def test_repair_takes_the_writer_lock_and_readers_keep_working(setup):
    repo, src, b1, b2 = setup
    with WriterLock(os.path.join(repo.path, "lock")):
        with pytest.raises(RepoLocked):
            repo.check(repair=True)
        assert repo.check().ok           # readers take no lock
    rep = repo.check(repair=True)
    assert rep.ok and rep.repair.nothing_to_do and not rep.repair.unrepaired


def test_an_index_that_does_not_match_the_packs_points_to_rebuild_index(setup):
    repo, src, b1, b2 = setup
    _, e = _pack_of(repo, b1, str(src / "a.bin"))
    ix = repo.repository.index
    node = next(iter(repo.list_backup(b1, str(src / "a.bin")))).node
    cid = node.chunk_ids()[0]
    with ix.env.begin(write=True) as txn:        # the entry points next to the blob the pack holds
        f = list(struct.unpack("<16sQIIQ", txn.get(cid, db=ix.chunks)))
        f[1] += 1
        txn.put(cid, struct.pack("<16sQIIQ", *f), db=ix.chunks)
    p = cli("check", "--repair", "--json", "--repo", repo.path, check=1)
    d = json.loads(p.stdout)
    assert d["ok"] is False and d["repair"]["rebuild_index"] is True and d["repair"]["unrepaired"]
    assert "rebuild-index" in d["repair"]["remaining"][0]
    assert d["repair"]["packs_salvaged"] == 0                 # nothing touched
    assert os.path.exists(os.path.join(repo.path, pack_name(e.pack)))
    repo.close()
    Repo.rebuild_index(repo.path)
    with Repo(repo.path) as again:
        assert again.check(read_data=True).ok
        p = cli("check", "--repair", "--json", "--repo", repo.path, check=0)
        assert json.loads(p.stdout)["repair"]["nothing_to_do"] is True


def test_rebuild_index_after_a_lost_pack_keeps_every_backup(setup, tmp_path):
    """The records name chunks no pack holds: registering them makes those chunks lost
    (not the backups unregistered); check --repair marks the backups, a backup heals them."""
    repo, src, b1, b2 = setup
    path, _ = _pack_of(repo, b1, str(src / "a.bin"), 1)
    os.remove(path)
    damaged_paths = repo.check().damaged[b2]
    repo.close()
    res = Repo.rebuild_index(repo.path)
    assert res.unregistered_backups == [] and res.damaged_packs == []
    with Repo(repo.path) as again:
        assert {b.id for b in again.list_backups()} == {b1, b2}
        r = again.check(repair=True).repair
        assert r.damaged == {b1: damaged_paths, b2: damaged_paths}
        assert set(again.damaged_backups()) == {b1, b2}
        _heal_and_verify(again, src, b1, b2, damaged_paths, tmp_path)


_REPAIR = """
import sys
from chunkrepo import Repo
with Repo(sys.argv[1]) as r:
    r.check(repair=True)
"""


@pytest.mark.parametrize("point", REPAIR_POINTS)
def test_repair_killed_at_each_step_is_finished_by_the_next(setup, tmp_path, point):
    repo, src, b1, b2 = setup
    path, e = _pack_of(repo, b1, str(src / "d" / "b.bin"), 0)
    with open(path, "r+b") as f:
        f.truncate(e.offset + e.length // 2)
    p = subprocess.run([sys.executable, "-c", _REPAIR, repo.path], capture_output=True,
                       env=dict(os.environ, CHUNKREPO_CRASH_AT=point))
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    r = repo.check(repair=True).repair        # finishes the job
    assert r.unrepaired and str(src / "d" / "b.bin") in r.damaged[b2]
    rep = repo.check(read_data=True)
    assert rep.unreferenced_packs == 0 and all("lost" in x for x in rep.errors), rep.errors
    assert repo.prune().errors == []          # what the killed repair left is garbage at most
    _heal_and_verify(repo, src, b1, b2, r.damaged[b2], tmp_path)


def test_counts_are_left_alone_while_a_record_cannot_be_read(setup):
    """A directory record whose cached copy is bad and whose pack gives an I/O error: the
    recount misses what it references, so repair must not lower those counts (prune would
    then delete live data); once the pack reads, repair restores the cached copy."""
    repo, src, b1, b2 = setup
    ix = repo.repository.index
    tid = next(iter(repo.list_backup(b1, str(src / "d")))).node.subtree
    cid = next(iter(repo.list_backup(b1, str(src / "d" / "b.bin")))).node.chunk_ids()[0]
    with ix.env.begin(write=True) as txn:
        txn.put(tid, b"not the record", db=ix.treedata)
    with ix.read() as v:
        before = v.chunk(cid).refcount
    fault = Fault("get", "packs/", kind="EIO")
    with Repo(repo.path, wrap_storage=lambda s: FaultyStorage(s, [fault])) as faulty:
        rep = faulty.check(repair=True)
        assert rep.repair.unrepaired and rep.repair.refcounts_fixed == 0 and rep.repair.blobs_lost == 0
        assert any("left as they are" in a for a in rep.repair.actions)
    with ix.read() as v:
        assert v.chunk(cid).refcount == before >= 1 and v.lost_count() == 0
    r = repo.check(repair=True).repair
    assert not r.unrepaired and r.blobs_kept == 1, r
    assert repo.check(read_data=True).ok
