"""A kill at every step of the commit sequence leaves a repository that checks
clean, keeps every earlier backup, and lets the next backup finish and reuse
what the killed one stored (borg's test_crash_before_* idea).

The killed backup adds more small files than session.STEP, so its pack of them is
committed, and the backup registered, in several index transactions: the kills at
"pack-step-committed" and "backup-registering" fall between two of them."""

import os
import signal
import subprocess
import sys

import pytest

from chunkrepo import Repo
from chunkrepo.index.lmdb_index import COMMITTING_META, REGISTERING_META
from chunkrepo.repository.config import Config
from chunkrepo.repository.crash_points import POINTS
from chunkrepo.repository.session import STEP
from tests.conftest import age, write_random

_BACKUP = """
import sys
from chunkrepo import Repo
from chunkrepo.index.lmdb_index import COMMITTING_META, REGISTERING_META
with Repo(sys.argv[1]) as r:
    r.backup([sys.argv[2]])
"""


def _source(root, seed):
    root.mkdir()
    for i in range(6):
        write_random(root / f"f{i}.bin", 700_000, seed=seed * 100 + i)
    (root / "small.txt").write_text("small\n")
    for p in root.iterdir():
        age(p)
    return root


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_commit_step(tmp_path, point):
    repo_path = tmp_path / "repo"
    Repo.init(repo_path, Config(pack_size=1 << 20)).close()
    src = _source(tmp_path / "src", seed=1)
    with Repo(repo_path) as r:
        before = r.backup([src])
    new = tmp_path / "src" / "new.bin"
    write_random(new, 3 << 20, seed=99)
    age(new)
    small = tmp_path / "src" / "small"
    for i in range(3 * STEP):     # two writer threads share them: more than STEP each
        d = small / f"d{i % 6}"   # registered a directory at a time
        d.mkdir(parents=True, exist_ok=True)
        (d / f"s{i:05d}").write_bytes(b"%d\n" % i)
        age(d / f"s{i:05d}")
    env = dict(os.environ, CHUNKREPO_CRASH_AT=point)
    p = subprocess.run([sys.executable, "-c", _BACKUP, str(repo_path), str(src)], env=env,
                       capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    journal = {"pack-step-committed": COMMITTING_META, "backup-registering": REGISTERING_META}.get(point)
    if journal is not None:     # the kill fell between two steps: the index says so
        with Repo(repo_path) as r, r._repo.index.read() as v:
            assert v.meta(journal) is not None

    with Repo(repo_path) as r:
        report = r.check(read_data=True)
        assert report.ok, report.errors
        with r.open_file(before.id, src / "f3.bin") as f:
            assert f.read() == (src / "f3.bin").read_bytes()
        after = r.backup([src])
        ids = [b.id for b in r.list_backups()]
        # the killed backup's record was durable at these points: it is adopted
        assert len(ids) == (3 if point in ("backup-stored", "backup-registering", "backup-committed") else 2)
        assert after.bytes_new < (3 << 20)   # packs sealed before the kill are reused
        with r.open_file(after.id, new) as f:
            assert f.read() == new.read_bytes()
        last = 3 * STEP - 1
        with r.open_file(after.id, small / f"d{last % 6}" / f"s{last:05d}") as f:
            assert f.read() == b"%d\n" % last
        assert r.check(read_data=True).ok
