"""The storage contract: what every implementation (and the retrying wrapper around it) does.

Run against a local directory, fsspec's memory and local filesystems, S3 on moto
and S3 on Ceph RGW (when CHUNKREPO_TEST_S3_ENDPOINT is set) each through s3fs and
through the native client, each plain and wrapped in RetryingStorage
(tests/storage/conftest.py).
"""

import concurrent.futures

import pytest

from chunkrepo.errors import NotFound, StorageError

DATA = bytes(range(256)) * 40 + b"tail"      # 10244 bytes


def test_put_get_round_trip(storage):
    storage.put("packs/ab/ab01", DATA)
    storage.put("config", b"c")
    storage.put("empty", b"")
    assert storage.get("packs/ab/ab01") == DATA
    assert storage.get("config") == b"c"
    assert storage.get("empty") == b""


def test_ranged_get(storage):
    storage.put("o", DATA)
    n = len(DATA)
    assert storage.get("o", 100, 50) == DATA[100:150]
    assert storage.get("o", 0, 1) == DATA[:1]
    assert storage.get("o", n - 4, 4) == b"tail"          # a range that ends at the end
    assert storage.get("o", 5000) == DATA[5000:]           # from an offset to the end
    assert storage.get("o", n) == b""                      # from the very end
    assert storage.get("o", 7, 0) == b""


def test_range_past_the_end_is_an_error(storage):
    """A range the object does not hold whole is truncation, not a short read."""
    storage.put("o", DATA)
    with pytest.raises(StorageError, match="truncated"):
        storage.get("o", len(DATA) - 2, 5)
    with pytest.raises(StorageError):
        storage.get("o", len(DATA) + 10, 5)


def test_size_and_exists(storage):
    storage.put("a/b/c", DATA)
    assert storage.size("a/b/c") == len(DATA)
    assert storage.exists("a/b/c")
    assert not storage.exists("a/b/d")
    assert not storage.exists("a/b")           # a folder of names is not an object


def test_missing_objects_raise_not_found(storage):
    with pytest.raises(NotFound):
        storage.get("nope")
    with pytest.raises(NotFound):
        storage.get("dir/nope", 10, 5)
    with pytest.raises(NotFound):
        storage.size("nope")


def test_list_below_a_prefix_recursively(storage):
    names = {"packs/00/0001", "packs/00/0002", "packs/ff/ff01", "packsx/1", "backups/b1", "config"}
    for n in names:
        storage.put(n, n.encode())
    assert sorted(storage.list("packs")) == ["packs/00/0001", "packs/00/0002", "packs/ff/ff01"]
    assert sorted(storage.list("packs/00")) == ["packs/00/0001", "packs/00/0002"]
    assert sorted(storage.list("backups")) == ["backups/b1"]
    assert list(storage.list("locks")) == []
    assert sorted(storage.list("")) == sorted(names)


def test_delete(storage):
    storage.put("backups/b1", b"x")
    storage.put("backups/b2", b"y")
    storage.delete("backups/b1")
    assert not storage.exists("backups/b1")
    with pytest.raises(NotFound):
        storage.get("backups/b1")
    assert list(storage.list("backups")) == ["backups/b2"]
    with pytest.raises(NotFound):
        storage.delete("backups/b1")


def test_put_replaces(storage):
    storage.put("o", DATA)
    storage.put("o", b"short")
    assert storage.get("o") == b"short"
    assert storage.size("o") == 5


def test_create_is_invisible_until_commit(storage):
    w = storage.create("packs/aa/aa01")
    w.write(DATA[:5000])
    w.write(memoryview(DATA)[5000:])
    assert w.tell() == len(DATA)
    assert not storage.exists("packs/aa/aa01")
    assert list(storage.list("packs")) == []            # no temporary shows either
    assert list(storage.list("")) == []
    w.commit()
    assert storage.get("packs/aa/aa01") == DATA
    assert list(storage.list("packs")) == ["packs/aa/aa01"]


def test_large_object_in_uneven_pieces(storage):
    # crosses LocalStorage's 1 MiB direct-write blocks at unaligned offsets, ends in a partial block
    import random
    data = random.Random(5).randbytes(3 * (1 << 20) + 12345)
    w = storage.create("packs/bb/bb01")
    pos = 0
    for n in (7, 1 << 20, 4095, 2 << 20, 1):
        w.write(memoryview(data)[pos:pos + n])
        pos += n
    w.write(data[pos:])
    assert w.tell() == len(data)
    w.commit()
    assert storage.size("packs/bb/bb01") == len(data)
    assert storage.get("packs/bb/bb01") == data
    assert storage.get("packs/bb/bb01", (1 << 20) - 3, 10) == data[(1 << 20) - 3:(1 << 20) + 7]


def test_create_replaces_on_commit(storage):
    storage.put("o", b"old")
    w = storage.create("o")
    w.write(DATA)
    assert storage.get("o") == b"old"
    w.commit()
    assert storage.get("o") == DATA


def test_abort_leaves_nothing(storage):
    storage.put("packs/keep", b"k")
    w = storage.create("packs/aa/aa02")
    w.write(DATA)
    w.abort()
    assert not storage.exists("packs/aa/aa02")
    assert list(storage.list("")) == ["packs/keep"]


def test_put_if_absent(lock_storage):
    storage = lock_storage
    assert storage.put_if_absent("locks/writer", b"mine") is True
    assert storage.put_if_absent("locks/writer", b"theirs") is False
    assert storage.get("locks/writer") == b"mine"
    storage.delete("locks/writer")
    assert storage.put_if_absent("locks/writer", b"theirs") is True
    assert storage.get("locks/writer") == b"theirs"


@pytest.mark.parametrize("kind", ["moto", "native-moto", pytest.param("ceph", marks=pytest.mark.ceph),
                                  pytest.param("native-ceph", marks=pytest.mark.ceph)])
def test_list_crosses_s3_pages(kind, open_storage):
    """S3 lists 1000 names per request; a listing must follow the continuation."""
    s = open_storage(kind)
    names = sorted(f"packs/{i % 7:02x}/{i:05d}" for i in range(1001))
    seed_objects(kind, s, names)
    s.put("other", b"y")
    assert sorted(s.list("packs")) == names
    assert len(list(s.list(""))) == 1002


def seed_objects(kind, s, names):
    """Tiny objects under s: straight into moto's in-process backend (1000 HTTP PUTs to moto
    cost seconds of CPU; the listing under test still goes over HTTP), by PUTs on Ceph."""
    native = kind.startswith("native-")
    if kind.endswith("moto"):
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends
        bucket, root = (s.settings.bucket, s.settings.prefix) if native else s.root.split("/", 1)
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        for n in names:
            backend.put_object(bucket, f"{root}/{n}", b"x")
    elif native:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: s.put(n, b"x"), names))
    else:
        s.fs.pipe({f"{s.root}/{n}": b"x" for n in names})
