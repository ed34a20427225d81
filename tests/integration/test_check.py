"""check: a healthy repository passes; damage to packs and the index is found and located."""

import json
import os

import pytest

from chunkrepo import Repo
from chunkrepo.repository.config import Config
from chunkrepo.repository.packs import pack_name
from tests.conftest import write_random


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    write_random(src / "a.bin", 3 << 20, seed=11)
    write_random(src / "d" / "b.bin", 2 << 20, seed=12)
    for i in range(20):
        (src / "d" / f"small{i}.txt").write_text(f"file {i}\n" * (i + 1))
    repo = Repo.init(tmp_path / "repo", Config(pack_size=1 << 20))
    first = repo.backup([src])
    (src / "new.txt").write_text("added later\n")
    second = repo.backup([src])
    yield repo, src, first.id, second.id
    repo.close()


def _chunk_entries(repo, backup_id, path):
    node = None
    for e in repo.list_backup(backup_id, path):
        node = e.node
        break
    r = repo.repository
    with r.index.read() as v:
        return [(cid, v.chunk(cid)) for cid in node.chunk_ids()]


def test_healthy_repository_passes(setup):
    repo, _, b1, b2 = setup
    rep = repo.check()
    assert rep.ok, rep.errors
    assert rep.backups == 2 and rep.packs >= 5 and rep.chunks >= 6 and rep.trees >= 4
    assert rep.bytes_checked == 0
    seen = []
    rep = repo.check(read_data=True, progress=lambda done, total: seen.append((done, total)))
    assert rep.ok and rep.errors == [] and rep.damaged == {}
    assert rep.bytes_checked >= 5 << 20
    assert seen and seen[-1][0] == seen[-1][1]
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["ok"] is True and d["backups"] == 2


def test_flipped_byte_in_a_chunk_is_found_with_read_data(setup):
    repo, src, b1, b2 = setup
    target = str(src / "d" / "b.bin")
    cid, e = _chunk_entries(repo, b1, target)[1]
    path = os.path.join(repo.path, pack_name(e.pack))
    with open(path, "r+b") as f:
        f.seek(e.offset + e.length // 2)
        byte = f.read(1)
        f.seek(e.offset + e.length // 2)
        f.write(bytes([byte[0] ^ 0x40]))
    assert repo.check().ok            # structure is intact: only reading the data shows it
    rep = repo.check(read_data=True)
    assert not rep.ok
    assert any(cid.hex() in err for err in rep.errors)
    assert rep.damaged == {b1: [target], b2: [target]}
    assert all("\n" not in err for err in rep.errors)


def test_deleted_pack_is_reported_with_the_paths_it_holds(setup):
    repo, src, b1, b2 = setup
    target = str(src / "a.bin")
    _, e = _chunk_entries(repo, b2, target)[0]
    os.unlink(os.path.join(repo.path, pack_name(e.pack)))
    rep = repo.check()
    assert not rep.ok
    assert any("missing" in err and e.pack.hex() in err for err in rep.errors)
    assert target in rep.damaged[b1] and target in rep.damaged[b2]
    rep = repo.check(read_data=True)
    assert not rep.ok and target in rep.damaged[b2]


def test_truncated_pack_is_reported(setup):
    repo, src, b1, b2 = setup
    target = str(src / "a.bin")
    _, e = _chunk_entries(repo, b1, target)[-1]
    path = os.path.join(repo.path, pack_name(e.pack))
    os.truncate(path, e.offset + 10)
    rep = repo.check()
    assert not rep.ok
    assert any("truncated" in err for err in rep.errors)
    assert any("trailer" in err for err in rep.errors)
    assert target in rep.damaged[b1]
    assert repo.check(read_data=True).damaged[b1] == rep.damaged[b1]


def test_tampered_reference_counts_are_reported(setup):
    repo, src, b1, b2 = setup
    cid, e = _chunk_entries(repo, b1, str(src / "a.bin"))[0]
    r = repo.repository
    with r.index.write() as w:
        w.set_refcount("chunk", cid, e.refcount + 1)
    rep = repo.check()
    assert not rep.ok
    assert rep.errors == [f"chunk {cid.hex()} has reference count {e.refcount + 1}, "
                          f"recount gives {e.refcount}"]
    assert rep.damaged == {}
    with r.index.write() as w:
        w.set_refcount("chunk", cid, e.refcount)
        root = bytes.fromhex(repo.get_backup(b1).root)
        w.set_refcount("tree", root, 0)
    rep = repo.check()
    assert not rep.ok and len(rep.errors) == 1 and root.hex() in rep.errors[0]


def test_counts_match_a_fresh_backup(tmp_path):
    """Same content twice in one backup counts twice; identical backups share the root."""
    src = tmp_path / "src"
    src.mkdir()
    write_random(src / "x", 600_000, seed=3)
    write_random(src / "y", 600_000, seed=3)
    with Repo.init(tmp_path / "repo") as repo:
        r1 = repo.backup([src])
        repo.backup([src])
        rep = repo.check(read_data=True)
        assert rep.ok, rep.errors
        node = next(iter(repo.list_backup(r1.id, str(src / "x")))).node
        with repo.repository.index.read() as v:
            assert v.chunk(node.chunk_ids()[0]).refcount == 2


def test_damaged_directory_record_in_pack_is_found(setup):
    repo, src, b1, b2 = setup
    r = repo.repository
    sub = next(iter(repo.list_backup(b1, str(src / "d")))).node.subtree
    with r.index.read() as v:
        e = v.tree(sub)
    path = os.path.join(repo.path, pack_name(e.pack))
    with open(path, "r+b") as f:
        f.seek(e.offset + 1)
        b = f.read(1)
        f.seek(e.offset + 1)
        f.write(bytes([b[0] ^ 0xFF]))
    rep = repo.check(read_data=True)
    assert not rep.ok
    assert any(sub.hex() in err for err in rep.errors)
    # the record cached in the index still works, but the pack copy is bad: the
    # directory is named as damaged
    assert str(src / "d") in rep.damaged[b1]


def test_index_entries_missing_or_cache_tampered(setup):
    repo, src, b1, b2 = setup
    r = repo.repository
    target = str(src / "a.bin")
    cid, _ = _chunk_entries(repo, b1, target)[0]
    sub = next(iter(repo.list_backup(b1, str(src / "d")))).node.subtree
    with r.index.write() as w:
        w.txn.delete(cid, db=r.index.chunks)                    # a file's chunk vanishes
        data = w.tree_data(sub)
        w.txn.put(sub, data.replace(b"small1", b"smallX"), db=r.index.treedata)   # cache tampered
    rep = repo.check()
    assert not rep.ok
    assert any(cid.hex() in e and "not in the index" in e for e in rep.errors)
    assert any(sub.hex() in e and "fails its hash" in e for e in rep.errors)
    for bid in (b1, b2):
        assert rep.damaged[bid] == sorted([target, str(src / "d")])
    # the pack copy of the record is intact, so the recount still sees through it:
    # no reference count complaints follow from the tampered cache
    assert not any("reference count" in e for e in rep.errors), rep.errors


def test_read_data_subset_slices_cover_every_pack_once(tmp_path):
    from chunkrepo.errors import ChunkrepoError
    from chunkrepo.ops.check import select_packs
    Repo.init(tmp_path / "r", Config(pack_size=1 << 20)).close()
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i}").write_bytes(os.urandom(300_000))
    with Repo(tmp_path / "r") as repo:
        repo.backup([src])
        full = repo.check(read_data=True)
        slices = [repo.check(read_data_subset=f"{n}/3") for n in (1, 2, 3)]
        assert all(r.ok for r in slices)
        assert sum(r.packs_read for r in slices) == full.packs_read > 3
        assert sum(r.bytes_checked for r in slices) == full.bytes_checked
        half = repo.check(read_data_subset="50%")
        assert half.ok and half.packs_read == -(-full.packs_read // 2)
        for bad in ("0/3", "4/3", "0%", "101%", "x"):
            with pytest.raises(ChunkrepoError, match="read-data-subset"):
                repo.check(read_data_subset=bad)
    pids = [bytes([i]) * 16 for i in range(10)]
    assert sorted(p for n in (1, 2) for p in select_packs(pids, f"{n}/2")) == pids
