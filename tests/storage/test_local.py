"""LocalStorage specifics: with O_DIRECT off, a large object is written buffered (the
direct path itself runs in the contract suite's large-object test; a real refusal of
O_DIRECT in tests/unit/test_direct_io.py)."""

import os
import random

from chunkrepo.direct_io import ENV
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

