"""index/resident.py: the LMDB map's pages leave the resident set, and reads stay correct."""

import os
import sys

import pytest

from chunkrepo.index import BlobEntry, Index, PackInfo
from chunkrepo.index.resident import CHECK_EVERY, GROWTH_PER_CALL, MappedPages, maps_of

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="Linux only")


def _rss_file_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


@pytest.fixture
def index(tmp_path):
    ix = Index(str(tmp_path / "index"))
    records = {i.to_bytes(32, "big"): os.urandom(16) * 768 for i in range(1500)}   # 12 KiB each
    with ix.env.begin(write=True) as txn:
        for k, v in records.items():
            txn.put(k, v, db=ix.treedata)
    yield ix, records
    ix.close()


def test_reads_through_dropped_pages_are_correct_and_bounded(index):
    ix, records = index
    assert ix.resident.drops == 0
    with ix.read() as v:        # one read transaction across many drops
        for k, want in records.items():
            assert v.tree_data(k) == want
    assert ix.resident.drops >= 2        # 18 MiB read against an 8 MiB budget
    before = _rss_file_kib()
    ix.resident.drop()
    assert _rss_file_kib() < before - 1024
    with ix.read() as v:
        assert all(v.tree_data(k) == want for k, want in records.items())


def test_never_touches_an_address_range_that_is_not_the_map(tmp_path):
    ix = Index(str(tmp_path / "index"))
    data = os.path.join(ix.path, "data.mdb")
    assert len(maps_of(data)) == 1 and ix.resident._map in maps_of(data)
    again = MappedPages(data, before=maps_of(data), mapped_size=lambda: ix.env.info()["map_size"])
    assert again._map is None                     # no new mapping to call ours: inactive
    again.drop()
    assert again.drops == 0
    ix.resident.drop()
    assert ix.resident.drops == 1
    ix.env.close()                                # unmapped behind its back
    ix.resident.drop()
    assert ix.resident.drops == 1 and ix.resident._madvise is None


def test_a_map_whose_size_changed_is_never_touched_again(tmp_path):
    ix = Index(str(tmp_path / "index"))
    data = os.path.join(ix.path, "data.mdb")
    size = [ix.env.info()["map_size"]]
    pages = MappedPages(data, before=set(), mapped_size=lambda: size[0])
    assert pages._map in maps_of(data)            # the one mapping of the file, taken as ours
    pages.drop()
    assert pages.drops == 1
    size[0] *= 2                                  # what a remap (mdb_env_set_mapsize) would show
    pages.drop()
    assert pages.drops == 1 and pages._madvise is None
    ix.close()


def test_point_lookups_keep_their_own_larger_budget(tmp_path):
    ix = Index(str(tmp_path / "index"))
    ids = [os.urandom(32) for _ in range(60000)]      # ~5 MiB of chunk entries
    with ix.write() as w:
        for i, cid in enumerate(ids):
            w.put_chunk(cid, BlobEntry(b"p" * 16, i, 1, 1, 1), new=True)
    ix.resident.drop()
    with ix.read() as v:
        assert all(v.has_chunk(cid) for cid in ids)
    assert ix.resident.drops == 1                     # under the 8 MiB lookup budget: kept
    ix.resident.lookup_budget = 1 << 20
    with ix.read() as v:
        ix.resident.drop()
        assert all(v.chunk(cid).offset == i for i, cid in enumerate(ids))
    assert ix.resident.drops >= 3
    ix.close()


def test_records_read_in_a_write_transaction_count_against_the_lookup_budget(index):
    ix, records = index                               # 18 MiB of records
    ix.resident.lookup_budget = 1 << 20               # a writer's budget; streamed reads keep 8 MiB
    ix.resident.drop()
    drops = ix.resident.drops
    with ix.write() as w:                             # registering a backup reads records so
        assert all(w.tree_data(k) == want for k, want in records.items())
        assert ix.resident.drops - drops >= 6         # 8 MiB at a time would be 2
    ix.close()


def test_recounting_a_pack_checks_the_map_while_it_scans(tmp_path):
    ix = Index(str(tmp_path / "index"))
    pid = b"p" * 16
    ids = sorted(os.urandom(32) for _ in range(20000))        # a garbage range of ~1.2 MiB
    for start in range(0, len(ids), 2000):                     # committed in steps, as a pack is
        with ix.write() as w:
            for i, cid in enumerate(ids[start:start + 2000], start):
                w.put_chunk(cid, BlobEntry(pid, i, 1, 1, 0), new=True)
    ix.resident.lookup_budget = 0                      # any growth a check sees drops the map
    with ix.write() as w:
        ix.resident.drop()
        drops = ix.resident.drops
        w.put_pack_recounted(pid, 100, len(ids))
        assert ix.resident.drops - drops >= 2          # during the scan, not only after the commit
    with ix.read() as v:
        assert v.pack_info(pid) == PackInfo(100, len(ids), len(ids), len(ids))
    ix.close()


def test_checks_come_closer_together_as_the_budget_nears(tmp_path):
    ix = Index(str(tmp_path / "index"))
    pages = ix.resident
    budget = 4 << 20
    pages._floor = _rss_shared() + (1 << 20)           # nothing grown: the longest spacing
    assert pages.check(budget) == CHECK_EVERY
    pages._floor = _rss_shared() - budget + GROWTH_PER_CALL * 7 // 2   # room for 3.5 calls
    assert pages.check(budget) == 3
    pages._floor = _rss_shared() - budget + (64 << 10)              # less than a call's room
    assert pages.check(budget) == 1 and pages.drops == 0
    pages._floor = _rss_shared() - budget - (1 << 20)               # over: dropped, and looked at
    assert pages.check(budget) == 1 and pages.drops == 1            # again after the next call
    ix.close()


def _rss_shared() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[2]) * os.sysconf("SC_PAGE_SIZE")


def test_the_map_size_check_leaves_the_interned_strings_alone(tmp_path):
    """A drop checks the map size through Environment.info(), whose dict keys CPython
    interns: kept interned for good (lmdb_index._INFO_KEYS), they are not added to and
    taken out of the interpreter's table of interned strings at every drop, which made
    that table (~1 MiB) be reallocated again and again in a long backup."""
    ix = Index(str(tmp_path / "index"))
    try:
        names = [k.encode() for k in ix.env.info()]
        ix.resident.drop()
        assert ix.resident.drops == 1
        for name in names:
            fresh = name.decode()                 # a new str object, never interned itself
            assert sys.intern(fresh) is not fresh, name
    finally:
        ix.close()
