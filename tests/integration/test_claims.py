"""Claims of a write session: each chunk is stored once, whether the index began empty
(claims answered from the session's own filter, repository/new_ids.py) or not."""

from chunkrepo import Repo
from chunkrepo.repository.config import Config
from tests.conftest import age


def _tree(src, copies: int):
    """Every content in `copies` files, with ~10 batches of other files between two copies:
    the pack holding the first copy is committed before the next copy is read."""
    for c in range(copies):
        for i in range(60):
            p = src / f"d{c}" / "same" / f"f{i:02d}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"content %d\n" % i * (200 + i))
            age(p)
        for i in range(640):
            p = src / f"d{c}" / "unique" / f"g{i:03d}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"%s %d %d\n" % (src.name.encode(), c, i))
            age(p)


def _unique_bytes(src, copies: int) -> int:
    return (sum((src / "d0" / "same" / f"f{i:02d}").stat().st_size for i in range(60))
            + sum(p.stat().st_size for c in range(copies) for p in (src / f"d{c}" / "unique").iterdir()))


def _check_clean(r):
    rep = r.check(read_data=True)
    assert rep.ok, rep.errors
    assert rep.garbage_blobs == 0          # no blob stored twice (a second copy is garbage)


def _check(r, unique_bytes, new_bytes):
    _check_clean(r)
    assert new_bytes == unique_bytes


def test_first_backup_into_an_empty_index_stores_each_chunk_once(tmp_path):
    src = tmp_path / "src"
    _tree(src, copies=8)
    Repo.init(tmp_path / "repo", Config(pack_size=4096)).close()
    with Repo(tmp_path / "repo") as r:
        res = r.backup([src])
        assert res.files == 8 * 700
        _check(r, _unique_bytes(src, 8), res.bytes_new)


def test_a_session_on_a_filled_index_looks_chunks_up(tmp_path):
    src, other = tmp_path / "src", tmp_path / "other"
    _tree(src, copies=3)
    _tree(other, copies=2)              # the same contents under another path
    Repo.init(tmp_path / "repo", Config(pack_size=4096)).close()
    with Repo(tmp_path / "repo") as r:
        first = r.backup([src])
        second = r.backup([other])       # a new subset: nothing to borrow, every chunk claimed
        assert second.files_borrowed == 0 and second.bytes_read == second.bytes_total > 0
        _check(r, _unique_bytes(src, 3) + _unique_bytes(other, 2) - _unique_bytes(other, 0),
               first.bytes_new + second.bytes_new)


def test_a_session_after_a_backup_of_directories_only_looks_records_up(tmp_path):
    """An index with directory records and no chunk is not an empty one: a record a
    second backup writes again (an empty directory's) is the stored one, never stored over."""
    src = tmp_path / "src"
    for d in ("a/x", "a/y", "b"):
        (src / d).mkdir(parents=True)
    Repo.init(tmp_path / "repo").close()
    with Repo(tmp_path / "repo") as r:
        first = r.backup([src])
        (src / "a" / "x" / "f").write_bytes(b"a file\n")
        second = r.backup([src / "a"])   # another subset: every record written afresh, a/y's again
        _check_clean(r)
        r.forget([second.id], prune=True)
        _check_clean(r)
        names = {e.node.name for e in r.list_backup(first.id, start=str(src))}
        assert {b"a", b"x", b"y", b"b"} <= names
