"""LocalStorage specifics: where a filesystem refuses O_DIRECT, a large object is written
buffered (the direct path itself runs in the contract suite's large-object test)."""

import os
import random

from chunkrepo.storage import LocalStorage
from chunkrepo.storage import local


def _write_read(storage, data, name="packs/cc/cc01"):
    w = storage.create(name)
    for i in range(0, len(data), 700_001):
        w.write(data[i:i + 700_001])
    w.commit()
    assert storage.get(name) == data


def test_large_object_where_o_direct_is_refused(tmp_path, monkeypatch):
    # a filesystem without O_DIRECT fails the open; O_DIRECTORY on a regular file fails it here
    monkeypatch.setattr(local, "_O_DIRECT", os.O_DIRECTORY)
    storage = LocalStorage(str(tmp_path))
    data = random.Random(3).randbytes(5 * (1 << 20) + 77)
    _write_read(storage, data)
    assert not storage._direct_ok            # every block went buffered
    _write_read(storage, data[::-1], "packs/cc/cc02")
    assert sorted(os.listdir(tmp_path / "packs" / "cc")) == ["cc01", "cc02"]

