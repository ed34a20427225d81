"""A writer killed with SIGKILL at random points leaves a repository that checks clean,
whose earlier backups read back unchanged, and whose next backup reuses the packs
the killed one sealed.

Every other round also adds more small files than session.STEP, so packs are committed
and backups registered in several index transactions, and some kills fall between them.

CHUNKREPO_CRASH_ITERATIONS (default 6) sets how many kills; CHUNKREPO_CRASH_SEED the seed.
"""

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from chunkrepo import Repo
from chunkrepo.index.lmdb_index import COMMITTING_META, REGISTERING_META
from chunkrepo.repository.config import Config
from chunkrepo.repository.packs import KIND_DATA, pack_id_from_name, read_trailer
from chunkrepo.repository.session import STEP
from tests.conftest import sha256_tree, write_random

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ITERATIONS = int(os.environ.get("CHUNKREPO_CRASH_ITERATIONS", "6"))
SEED = int(os.environ.get("CHUNKREPO_CRASH_SEED", "20240607"))
BIG = 6
BIG_SIZE = 3 << 20

CHILD = """
import sys
from chunkrepo import Repo
with Repo(sys.argv[1]) as r:
    res = r.backup([sys.argv[2]])
print(res.id, flush=True)
"""


def _make_tree(src, rnd):
    for d in range(10):
        os.makedirs(src / f"dir{d}" / "sub", exist_ok=True)
        for i in range(30):
            where = src / f"dir{d}" / ("sub" if i % 3 == 0 else "") / f"f{i}.txt"
            where.write_bytes(rnd.randbytes(rnd.randrange(0, 6000)))
    for i in range(BIG):
        write_random(src / f"big{i}.bin", BIG_SIZE, seed=rnd.randrange(1 << 30))


def _sealed_packs(repo_path):
    out = set()
    for dirpath, _, files in os.walk(os.path.join(repo_path, "packs")):
        for n in files:
            if not n.startswith(".tmp-"):
                out.add(os.path.relpath(os.path.join(dirpath, n), repo_path))
    return out


def _verify(repo, expected):
    for bid, files in expected.items():
        for path, digest in files.items():
            with repo.open_file(bid, path) as f:
                assert hashlib.sha256(f.read()).digest() == digest, (bid, path)


def _in_steps(repo):
    with repo._repo.index.read() as v:
        return v.meta(COMMITTING_META) is not None or v.meta(REGISTERING_META) is not None


def _kill_during_backup(repo_path, src, rnd, steps):
    """Start a backup in a child and SIGKILL it after some packs were sealed, or
    (steps) once the index shows a pack commit or registration in steps under way."""
    before = _sealed_packs(repo_path)
    want = rnd.randint(2, 5)
    extra = rnd.uniform(0, 0.03) if rnd.random() < 0.5 else rnd.uniform(0, 0.4)
    env = dict(os.environ, PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(repo_path), str(src)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    with Repo(repo_path) as reader:
        while child.poll() is None and time.monotonic() < deadline:
            if _in_steps(reader) if steps else len(_sealed_packs(repo_path) - before) >= want:
                extra = 0 if steps else extra
                break
            time.sleep(0.001 if steps else 0.003)
    time.sleep(extra)
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate()
    if child.returncode == 0:
        return out.decode().split()[0]
    assert child.returncode == -signal.SIGKILL, err.decode()
    return None


def test_kill_minus_nine_at_random_points(tmp_path):
    rnd = random.Random(SEED)
    src = tmp_path / "src"
    _make_tree(src, rnd)
    repo_path = tmp_path / "repo"
    Repo.init(repo_path, Config(pack_size=1 << 20)).close()
    expected = {}
    with Repo(repo_path) as repo:
        first = repo.backup([src])
        assert first.errors == []
        expected[first.id] = sha256_tree(src)
    kills = between_steps = 0
    for it in range(ITERATIONS):
        # change part of the tree: three big files and a few small ones
        changed = 0
        for i in rnd.sample(range(BIG), 3):
            write_random(src / f"big{i}.bin", BIG_SIZE, seed=rnd.randrange(1 << 30))
            changed += BIG_SIZE
        for _ in range(10):
            p = src / f"dir{rnd.randrange(10)}" / f"f{rnd.choice([1, 2, 4, 5])}.txt"
            data = rnd.randbytes(rnd.randrange(1, 6000))
            p.write_bytes(data)
            changed += len(data)
        shutil.rmtree(src / f"z{it - 1:03d}", ignore_errors=True)
        for i in range(2 * STEP if it % 2 == 0 else 0):      # walked last ("z..."), in four directories
            p = src / f"z{it:03d}" / f"s{i % 4}" / f"{i}"
            p.parent.mkdir(parents=True, exist_ok=True)
            data = b"%d %d\n" % (it, i)
            p.write_bytes(data)
            changed += len(data)
        digests = sha256_tree(src)
        indexed = _sealed_packs(repo_path)
        done_id = _kill_during_backup(repo_path, src, rnd, steps=it % 4 == 2)
        if done_id is not None:          # finished before the kill: a complete backup
            expected[done_id] = digests
            continue
        kills += 1
        left = _sealed_packs(repo_path) - indexed
        adopted_raw = 0
        for name in left:
            try:
                entries = read_trailer_from(repo_path, name)
            except Exception:
                continue
            adopted_raw += sum(e.raw_length for e in entries if e.kind == KIND_DATA)
        with Repo(repo_path) as repo:
            with repo._repo.index.read() as v:
                between_steps += v.meta(COMMITTING_META) is not None or v.meta(REGISTERING_META) is not None
            rep = repo.check(read_data=True)
            assert rep.ok, (it, rep.errors)
            _verify(repo, expected)
            res = repo.backup([src])
            assert res.errors == []
            # the sealed packs of the killed writer were adopted, not written again
            assert adopted_raw > 0
            assert res.bytes_new <= changed - adopted_raw, (res.bytes_new, changed, adopted_raw)
            assert res.bytes_new < res.bytes_total * 0.45
            expected[res.id] = digests
            assert repo.check().ok
    print(f"{kills} kills in {ITERATIONS} iterations, {between_steps} between two index steps")
    assert kills >= ITERATIONS // 2
    with Repo(repo_path) as repo:
        rep = repo.check(read_data=True)
        assert rep.ok, rep.errors
        _verify(repo, expected)


def read_trailer_from(repo_path, name):
    from chunkrepo.storage import LocalStorage
    st = LocalStorage(str(repo_path))
    try:
        pack_id_from_name(name)
        return read_trailer(st, name)
    finally:
        st.close()
