import os
import random

import pytest

from chunkrepo import Repo


@pytest.fixture
def repo(tmp_path):
    r = Repo.init(tmp_path / "repo")
    yield r
    r.close()


def write_random(path, size, seed=0):
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rnd.randbytes(n))
            left -= n
    return path


@pytest.fixture
def make_random():
    return write_random


def age(path, seconds=10):
    """Push a file's mtime into the past so the racy-timestamp rule trusts it."""
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9), follow_symlinks=False)
