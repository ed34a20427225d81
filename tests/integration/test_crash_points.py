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


_BATCHED = """
import sys
from chunkrepo import Repo
from chunkrepo.repository import session
session.STEP = 3                 # tiny steps and batches: a registration of many of each
session.REGISTER_BATCH = 25
with Repo(sys.argv[1]) as r:
    r.backup([sys.argv[2]])
"""


@pytest.mark.parametrize("nth", [1, 4, 9, 14, 19])
def test_kill_inside_a_registration_batch(tmp_path, nth):
    """A backup's chunk references are added in batches, sorted (session.REGISTER_BATCH);
    a kill between two steps of a batch, or between the steps that collect one, is
    rolled forward by the next writer: the counts come out exact (check recounts them),
    and forgetting every backup frees every blob."""
    repo_path = tmp_path / "repo"
    Repo.init(repo_path, Config(pack_size=1 << 20)).close()
    src = tmp_path / "src"
    for d in range(8):
        for i in range(12):
            p = src / f"d{d}" / f"e{i % 3}" / f"f{i:02d}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"shared\n" if i % 5 == 0 else b"%d/%d\n" % (d, i))   # some chunks twice
            age(p)
    env = dict(os.environ, CHUNKREPO_CRASH_AT=f"backup-registering:{nth}")
    p = subprocess.run([sys.executable, "-c", _BATCHED, str(repo_path), str(src)], env=env,
                       capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    with Repo(repo_path) as r, r._repo.index.read() as v:
        assert v.meta(REGISTERING_META) is not None
        assert r.check().pending_backups == 1     # a reader sees it in the middle, and no damage
    with Repo(repo_path) as r:
        r.backup([src / "d0"])                     # the next writer rolls it forward first
        report = r.check(read_data=True)
        assert report.ok, report.errors
        assert len(r.list_backups()) == 2
        with r._repo.index.read() as v:
            assert v.meta(REGISTERING_META) is None and v.meta("registering-batch") is None
        killed = next(b.id for b in r.list_backups() if len(b.paths) == 1 and b.paths[0] == str(src))
        for d in range(8):
            with r.open_file(killed, src / f"d{d}" / "e1" / "f07") as f:
                assert f.read() == b"%d/7\n" % d
        r.forget([b.id for b in r.list_backups()])
        r.prune()
        assert r.check().chunks == 0


def test_journal_of_an_older_writer_is_rolled_forward(tmp_path):
    """meta["registering"] as writers before the sorted batches left it, [backup id,
    tree ids still to reference] (no position, no batch), is finished as before."""
    from chunkrepo.codec import records
    repo_path = tmp_path / "repo"
    Repo.init(repo_path, Config(pack_size=1 << 20)).close()
    src = _source(tmp_path / "src", seed=3)
    env = dict(os.environ, CHUNKREPO_CRASH_AT="backup-stored")
    p = subprocess.run([sys.executable, "-c", _BACKUP, str(repo_path), str(src)], env=env, capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    (name,) = os.listdir(repo_path / "backups")
    rec = records.decode_json((repo_path / "backups" / name).read_bytes())
    with Repo(repo_path) as r, r._repo.index.write() as w:   # nothing referenced yet: the root to do
        w.put_meta(REGISTERING_META, records.pack_msgpack([name, bytes.fromhex(rec["root"])]))
    with Repo(repo_path) as r:
        r.backup([src / "small.txt"])
        assert r.check(read_data=True).ok
        assert name in [b.id for b in r.list_backups()]
        with r.open_file(name, src / "f2.bin") as f:
            assert f.read() == (src / "f2.bin").read_bytes()
