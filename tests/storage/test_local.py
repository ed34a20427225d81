"""LocalStorage specifics: with O_DIRECT off, a large object is written buffered (the
direct path itself runs in the contract suite's large-object test; a real refusal of
O_DIRECT in tests/unit/test_direct_io.py)."""

import os
import random

import pytest

from chunkrepo.direct_io import ENV
from chunkrepo.errors import NotFound, StorageError
from chunkrepo.storage import LocalStorage


def _write_read(storage, data, name="packs/cc/cc01"):
    w = storage.create(name)
    for i in range(0, len(data), 700_001):
        w.write(data[i:i + 700_001])
    w.commit()
    assert storage.get(name) == data


def test_large_object_with_o_direct_off(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "0")
    storage = LocalStorage(str(tmp_path))
    data = random.Random(3).randbytes(5 * (1 << 20) + 77)
    _write_read(storage, data)
    assert not storage._direct.enabled       # every block went buffered
    _write_read(storage, data[::-1], "packs/cc/cc02")
    assert sorted(os.listdir(tmp_path / "packs" / "cc")) == ["cc01", "cc02"]


def test_readinto_reads_what_get_reads_into_the_callers_buffer(tmp_path):
    storage = LocalStorage(str(tmp_path))
    data = random.Random(4).randbytes(100_000)
    storage.put("packs/dd/dd01", data)
    buf = bytearray(30_000)
    view = memoryview(buf)
    storage.readinto("packs/dd/dd01", 1234, view[:20_000])
    assert bytes(buf[:20_000]) == storage.get("packs/dd/dd01", 1234, 20_000) == data[1234:21_234]
    assert buf[20_000:] == bytes(10_000)          # nothing past the view
    with pytest.raises(StorageError, match="truncated"):
        storage.readinto("packs/dd/dd01", 90_000, view)
    with pytest.raises(NotFound):
        storage.readinto("packs/dd/dd02", 0, view)


def test_a_descriptor_evicted_during_a_read_is_closed_after_it(tmp_path):
    """Reads share a cache of open descriptors; one evicted by another thread (more
    objects read than max_open) while a read uses it is closed only when that read
    is done: its number is never reused under it (reads came from the wrong file)."""
    import threading
    storage = LocalStorage(str(tmp_path), max_open=2)
    objects = {f"packs/ee/ee{i:02d}": bytes([i]) * (2 << 20) for i in range(8)}
    for name, data in objects.items():
        storage.put(name, data)
    errors = []

    def reader(seed):
        rnd = random.Random(seed)
        buf = bytearray(1 << 20)
        try:
            for _ in range(300):
                name = rnd.choice(list(objects))
                want = objects[name][:1 << 20]
                if rnd.random() < 0.5:
                    got = storage.get(name, rnd.randrange(1 << 20), 1 << 20)
                else:
                    storage.readinto(name, rnd.randrange(1 << 20), buf)
                    got = bytes(buf)
                if got != want:
                    errors.append(f"{name}: read another object's bytes")
                    return
        except (OSError, StorageError) as e:
            errors.append(f"{name}: {e}")

    def reopener():       # takes the numbers of closed descriptors, as restore's files do
        for _ in range(3000):
            fd = os.open(tmp_path / "packs" / "ee" / "ee00", os.O_RDONLY)
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)] + [threading.Thread(target=reopener)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    storage.close()
    assert storage._fds == {}
