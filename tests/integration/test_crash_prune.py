"""forget, prune and repack killed with SIGKILL at random times (the backup is covered by
test_crash.py; the named crash points of all four by test_crash_points.py and
test_forget_prune.py).  After each kill: check --read-data passes, every backup complete
before the kill reads back byte-identical, and the next backup and prune succeed.

CHUNKREPO_CRASH_ITERATIONS (default 6) sets how many kills; CHUNKREPO_CRASH_SEED the seed.
"""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

from chunkrepo import Repo
from chunkrepo.repository.config import Config
from tests.conftest import age, sha256_tree, write_random

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ITERATIONS = int(os.environ.get("CHUNKREPO_CRASH_ITERATIONS", "6"))
SEED = int(os.environ.get("CHUNKREPO_CRASH_SEED", "20240607"))
BIG, BIG_SIZE = 8, 700_000

# mode: "forget" (forget alone), "prune" (repack everything with garbage), "forget+prune"
CHILD = """
import sys, time
from chunkrepo import Repo
mode, repo_path, oldest = sys.argv[1:4]
with Repo(repo_path) as r:
    print("go", flush=True)
    t0 = time.monotonic()
    if mode == "forget":
        r.forget([oldest])
    elif mode == "prune":
        r.prune(repack_threshold=0.0)
    else:
        r.forget([oldest], prune=True, repack_threshold=0.0)
    print(time.monotonic() - t0, flush=True)
"""
MODES = ("forget+prune", "prune", "forget")


def _change(src, rnd):
    for i in rnd.sample(range(BIG), 2):
        write_random(src / f"big{i}.bin", BIG_SIZE, seed=rnd.randrange(1 << 30))
    for _ in range(8):
        p = src / f"d{rnd.randrange(4)}" / f"s{rnd.randrange(20)}.txt"
        p.write_bytes(rnd.randbytes(rnd.randrange(1, 5000)))
    for dirpath, _, files in os.walk(src):
        for n in files:
            age(os.path.join(dirpath, n), 30)



def _verify(repo, expected, where):
    for bid, files in expected.items():
        for path, digest in files.items():
            with repo.open_file(bid, path) as f:
                assert hashlib.sha256(f.read()).digest() == digest, (where, bid, path)


def _run_child(mode, repo_path, oldest, delay):
    """Start the child, SIGKILL it `delay` seconds after it opened the repository
    (None: let it finish); returns (killed, seconds the work took if it finished)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(repo_path), oldest],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert child.stdout.readline() == b"go\n", child.stderr.read().decode()
    if delay is not None:
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
    out, err = child.communicate()
    if child.returncode == 0:
        return False, float(out.split()[0])
    assert child.returncode == -signal.SIGKILL, err.decode()
    return True, None


def test_kill_forget_prune_and_repack_at_random_times(tmp_path):
    rnd = random.Random(SEED)
    src = tmp_path / "src"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(20):
            (src / f"d{d}" / f"s{i}.txt").write_bytes(rnd.randbytes(rnd.randrange(1, 5000)))
    for i in range(BIG):
        write_random(src / f"big{i}.bin", BIG_SIZE, seed=rnd.randrange(1 << 30))
    _change(src, rnd)
    repo_path = tmp_path / "repo"
    Repo.init(repo_path, Config(pack_size=1 << 20)).close()
    expected = {}
    with Repo(repo_path) as repo:
        for _ in range(3):
            expected[repo.backup([src]).id] = sha256_tree(src)
            _change(src, rnd)
    # how long the work takes once the child has the repository open
    oldest = next(iter(expected))
    _, took = _run_child("forget+prune", repo_path, oldest, None)
    del expected[oldest]
    kills = {m: 0 for m in MODES}
    states: dict = {}     # what the kills left behind: evidence they landed inside the work
    for it in range(ITERATIONS):
        mode = MODES[it % len(MODES)]
        with Repo(repo_path) as repo:
            expected[repo.backup([src]).id] = sha256_tree(src)
            _change(src, rnd)
            oldest = repo.list_backups()[0].id
            if mode == "prune":
                repo.forget([oldest])
                del expected[oldest]
        killed, _ = _run_child(mode, repo_path, oldest, rnd.uniform(0, took * 1.2))
        kills[mode] += killed
        with Repo(repo_path) as repo:
            rep = repo.check(read_data=True)
            assert rep.ok, (it, mode, rep.errors)
            listed = {b.id for b in repo.list_backups()}
            if killed:
                for what, n in (("new packs not indexed yet", rep.unreferenced_packs),
                                ("packs pending deletion", rep.pending_deletion),
                                ("forget undone (record left)", rep.pending_backups),
                                ("garbage left", rep.garbage_blobs)):
                    states[what] = states.get(what, 0) + (n > 0)
            undone = os.path.exists(repo_path / "backups" / oldest)    # the next writer registers it again
            if mode != "prune" and oldest not in listed and not undone:
                del expected[oldest]        # the forget was done before the kill
            assert set(expected) <= listed | {oldest}, (it, mode)
            _verify(repo, {b: d for b, d in expected.items() if b in listed}, (it, mode))
            res = repo.backup([src])
            assert res.errors == []
            assert set(expected) <= {b.id for b in repo.list_backups()}
            _verify(repo, {b: d for b, d in expected.items() if b not in listed}, (it, mode))
            expected[res.id] = sha256_tree(src)
            assert not repo.prune(repack_threshold=0.0).errors
            rep = repo.check(read_data=True)
            assert rep.ok and rep.garbage_blobs == 0 and rep.unreferenced_packs == 0, rep.errors
            if mode != "prune" and oldest in expected:     # killed before the forget: do it now
                repo.forget([oldest], prune=True)
                del expected[oldest]
    print(f"kills: {kills} in {ITERATIONS} iterations; kills that left {states}")
    assert sum(kills.values()) >= ITERATIONS // 2
