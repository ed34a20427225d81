"""Packs committed and backups registered in bounded index transactions (session.STEP)
keep every count and the garbage set exact through backup, forget and prune, and a
pack never holds more than session.MAX_PACK_BLOBS blobs.  The steps are made tiny
here so that every pack and every backup takes many of them."""

import os

from chunkrepo import Repo
from chunkrepo.repository import session
from chunkrepo.repository.config import Config
from chunkrepo.repository.packs import read_trailer
from tests.conftest import age


def _tree(src, seed):
    for d in range(6):
        for i in range(40):
            p = src / f"d{d}" / f"f{i:03d}"
            p.parent.mkdir(parents=True, exist_ok=True)
            # every fifth file has the same content as one in d0: duplicates across directories
            p.write_bytes(b"same %d\n" % i if i % 5 == 0 else b"%d %d %d\n" % (seed, d, i))
            age(p)


def _packs(repo_path):
    from chunkrepo.storage import LocalStorage
    st = LocalStorage(str(repo_path))
    try:
        return [read_trailer(st, n) for n in st.list("packs")]
    finally:
        st.close()


def test_tiny_steps_keep_counts_and_garbage_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(session, "STEP", 7)
    monkeypatch.setattr(session, "MAX_PACK_BLOBS", 50)
    src = tmp_path / "src"
    _tree(src, 1)
    repo_path = tmp_path / "repo"
    Repo.init(repo_path, Config(pack_size=1 << 20)).close()
    with Repo(repo_path) as r:
        first = r.backup([src])
        rep = r.check()
        assert rep.ok, rep.errors
        _tree(src, 2)          # four files in five change
        second = r.backup([src])
        rep = r.check(read_data=True)
        assert rep.ok, rep.errors
        assert rep.garbage_blobs == 0
        r.forget([first.id], prune=True)
        rep = r.check(read_data=True)
        assert rep.ok, rep.errors
        assert [b.id for b in r.list_backups()] == [second.id]
        for d, i in ((0, 0), (3, 7), (5, 39)):
            with r.open_file(second.id, src / f"d{d}" / f"f{i:03d}") as f:
                assert f.read() == (src / f"d{d}" / f"f{i:03d}").read_bytes()
    counts = [len(t) for t in _packs(repo_path)]
    assert max(counts) <= 50 and sum(counts) > 2 * 50


def test_check_between_steps_sees_no_damage(tmp_path, monkeypatch):
    """A reader's check in the middle of a stepped pack commit and of a stepped
    registration (what a kill there leaves, before recovery) finds nothing wrong."""
    monkeypatch.setattr(session, "STEP", 5)
    src = tmp_path / "src"
    _tree(src, 3)
    repo_path = tmp_path / "repo"
    Repo.init(repo_path, Config(pack_size=1 << 20)).close()
    reports = []
    real_crash_point = session.crash_point

    def check_here(name):
        if name in ("pack-step-committed", "backup-registering") and sum(n == name for n, _ in reports) < 20:
            with Repo(repo_path) as reader:
                reports.append((name, reader.check()))
        real_crash_point(name)

    monkeypatch.setattr(session, "crash_point", check_here)
    with Repo(repo_path) as r:
        res = r.backup([src])
    names = {n for n, _ in reports}
    assert names == {"pack-step-committed", "backup-registering"}, names
    for name, rep in reports:
        assert rep.ok, (name, rep.errors)
    registering = [rep for n, rep in reports if n == "backup-registering"]
    assert registering[0].pending_backups == 1 and registering[0].backups == 0
    with Repo(repo_path) as r:
        assert r.check(read_data=True).ok
        assert [b.id for b in r.list_backups()] == [res.id]
    assert os.path.exists(repo_path / "backups" / res.id)


def test_index_syncs_pages_before_meta(tmp_path):
    # the step commits are not durable (docs/format.md, Write order): that is safe only
    # while each commit still syncs its pages before its meta page points at them
    # (MDB_NOMETASYNC); MDB_NOSYNC would let a power cut leave a meta page pointing at
    # pages that never reached the disk
    Repo.init(tmp_path / "repo").close()
    with Repo(tmp_path / "repo") as r:
        flags = r._repo.index.env.flags()
    assert flags["sync"] is True and flags["metasync"] is False


def test_a_writer_keeps_less_of_the_map_than_readers(tmp_path):
    Repo.init(tmp_path / "repo").close()
    with Repo(tmp_path / "repo") as r:
        resident = r._repo.index.resident
        assert resident.lookup_budget == 8 << 20
        with r._repo.write_session():
            assert resident.lookup_budget == session.WRITER_LOOKUP_BUDGET == 2 << 20
        assert resident.lookup_budget == 8 << 20


def test_records_fill_their_packs_up_to_the_early_seal(tmp_path, monkeypatch):
    """A pack is sealed early once it holds _MAX_PENDING_TREE_BYTES of directory records;
    the records after it fill the next pack, not a pack each."""
    limit = 16 << 10
    monkeypatch.setattr(session, "_MAX_PENDING_TREE_BYTES", limit)
    src = tmp_path / "src"
    for d in range(200):
        for i in range(3):
            p = src / f"dir{d:03d}" / (f"file-with-a-long-name-{i}-" + "x" * 60)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"%d %d\n" % (d, i))
    repo_path = tmp_path / "repo"
    Repo.init(repo_path).close()
    with Repo(repo_path) as r:
        r.backup([src])
        assert r.check().ok
    trailers = _packs(repo_path)
    records = [e for t in trailers for e in t if e.kind == 1]
    holding = sum(1 for t in trailers if any(e.kind == 1 for e in t))
    assert len(records) > 200
    assert holding <= sum(e.raw_length for e in records) // limit + 2
