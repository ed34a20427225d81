"""forget and prune: what only forgotten backups used is freed, nothing else; dry runs
change nothing; bad input is one line; a kill at any step of forget/prune leaves a
repository that checks clean; a reader on an old snapshot keeps the packs it reads."""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from chunkrepo import Repo
from chunkrepo.ops.retention import Policy
from chunkrepo.repository.config import Config
from chunkrepo.repository.crash_points import FORGET_POINTS, PRUNE_POINTS
from chunkrepo.repository.packs import pack_name
from tests.conftest import age, write_random

SMALL = 30_000


class Repos:
    """A repository with three backups of a changing tree, and what each held."""

    def __init__(self, tmp_path):
        self.path = tmp_path / "repo"
        self.src = tmp_path / "src"
        self.src.mkdir()
        self.repo = Repo.init(self.path, Config(pack_size=1 << 20))
        self.content = {}      # backup id -> {relative path: bytes}
        self.ids = []

    def write(self, rel, size, seed):
        write_random(self.src / rel, size, seed=seed)
        age(self.src / rel)

    def backup(self):
        res = self.repo.backup([self.src])
        self.content[res.id] = {p.name: p.read_bytes() for p in sorted(self.src.iterdir())}
        self.ids.append(res.id)
        return res.id

    def reads_back(self, bid):
        for name, data in self.content[bid].items():
            with self.repo.open_file(bid, self.src / name) as f:
                assert f.read() == data, (bid, name)


def build(tmp_path) -> Repos:
    r = Repos(tmp_path)
    r.write("big1", 2_500_000, 1)
    r.write("big2", 1_500_000, 2)
    for i in range(30):
        r.write(f"s{i:02d}", SMALL, 100 + i)
    r.backup()
    os.unlink(r.src / "big2")
    for i in range(5):                       # their old chunks share packs with live ones
        r.write(f"s{i:02d}", SMALL, 200 + i)
    r.write("big3", 2_000_000, 3)
    r.backup()
    for i in range(5, 8):
        r.write(f"s{i:02d}", SMALL, 300 + i)
    r.backup()
    return r


@pytest.fixture
def setup(tmp_path):
    r = build(tmp_path)
    yield r
    r.repo.close()


def _reachable(repo, ids):
    """Chunk and directory record ids the given backups reference, found by walking them."""
    chunks, trees = set(), set()
    for bid in ids:
        trees.add(bytes.fromhex(repo.get_backup(bid).root))
        for e in repo.list_backup(bid):
            if e.node.subtree is not None:
                trees.add(e.node.subtree)
            chunks.update(e.node.chunk_ids())
    return chunks, trees


def _indexed(repo):
    with repo.repository.index.read() as v:
        return {c for c, _ in v.all_chunks()}, {t for t, _ in v.all_trees()}


def _pack_files(path):
    out = {}
    for d, _, files in os.walk(path / "packs"):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[f] = (st.st_size, st.st_mtime_ns)
    return out


def _state(r):
    """Everything a dry run must leave alone: pack files, records, the whole index."""
    ix = r.repo.repository.index
    dump = {}
    with ix.env.begin() as txn:
        for name in (b"chunks", b"trees", b"packs", b"backups", b"garbage", b"pending"):
            db = ix.env.open_db(name, txn=txn)
            dump[name] = list(txn.cursor(db=db))
    return _pack_files(r.path), sorted(os.listdir(r.path / "backups")), dump


def test_forget_then_prune_frees_exactly_what_only_the_forgotten_backup_used(setup):
    r = setup
    repo = r.repo
    b1, b2, b3 = r.ids
    live_chunks, live_trees = _reachable(repo, [b2, b3])
    all_chunks, all_trees = _indexed(repo)
    only_b1 = all_chunks - live_chunks
    assert only_b1 and live_chunks < all_chunks            # big2 and the old s00..s04
    disk_before = sum(s for s, _ in _pack_files(r.path).values())

    res = repo.forget([b1[:10]])
    assert res.removed == [b1] and sorted(res.kept) == sorted([b2, b3])
    assert not (r.path / "backups" / b1).exists()
    assert [b.id for b in repo.list_backups()] == [b2, b3]
    rep = repo.check()
    assert rep.ok, rep.errors
    assert rep.garbage_blobs >= len(only_b1) + 1           # + at least b1's root record

    pr = repo.prune(repack_threshold=0.0)
    assert not pr.errors and not pr.nothing_to_do
    assert pr.packs_deleted >= 1 and pr.packs_rewritten >= 1 and pr.bytes_freed > 0
    assert pr.files_deleted == pr.packs_deleted + pr.packs_rewritten and pr.packs_awaiting_deletion == 0
    chunks, trees = _indexed(repo)
    assert chunks == live_chunks and trees == live_trees    # exactly the unused blobs are gone
    assert pr.blobs_freed == len(all_chunks - chunks) + len(all_trees - trees)
    disk_after = sum(s for s, _ in _pack_files(r.path).values())
    assert disk_before - disk_after == pr.bytes_freed
    rep = repo.check(read_data=True)
    assert rep.ok, rep.errors
    assert rep.garbage_blobs == 0 and rep.unreferenced_packs == 0 and rep.pending_deletion == 0
    for bid in (b2, b3):
        r.reads_back(bid)
    # the repository goes on: a new backup, and a prune with nothing to do
    r.write("s20", SMALL, 999)
    r.reads_back(r.backup())
    assert repo.prune().nothing_to_do


def test_repack_threshold_decides_which_partly_dead_packs_are_rewritten(setup):
    r = setup
    repo = r.repo
    repo.forget([r.ids[0]])
    ix = repo.repository.index
    with ix.read() as v:
        packs = {g.pack for g in v.garbage()}
        infos = {p: v.pack_info(p) for p in packs}
    partial = {p: i.dead_bytes / i.size for p, i in infos.items() if i.dead_blobs < i.count}
    dead = {p for p, i in infos.items() if i.dead_blobs == i.count}
    assert partial and dead
    files = _pack_files(r.path)

    high = max(partial.values()) + 0.001           # every partly dead pack is below it
    pr = repo.prune(repack_threshold=high)
    assert pr.packs_rewritten == 0 and pr.packs_deleted == len(dead)
    assert pr.packs_kept_with_garbage == len(partial)
    assert pr.bytes_unused_kept == sum(infos[p].dead_bytes for p in partial)
    after = _pack_files(r.path)
    for p in partial:                              # untouched: same file, same mtime
        assert after[p.hex()] == files[p.hex()]
    for p in dead:
        assert p.hex() not in after
    assert repo.check().ok
    again = repo.prune(repack_threshold=high)
    assert again.nothing_to_do and again.packs_kept_with_garbage == len(partial)

    low = min(partial.values()) - 0.001
    pr = repo.prune(repack_threshold=low)
    assert pr.packs_rewritten == len(partial) and pr.packs_written >= 1 and pr.blobs_moved >= 1
    after = _pack_files(r.path)
    assert not any(p.hex() in after for p in partial)
    rep = repo.check(read_data=True)
    assert rep.ok and rep.garbage_blobs == 0, rep.errors
    r.reads_back(r.ids[1])
    r.reads_back(r.ids[2])


def test_prune_with_nothing_to_free_reads_no_pack(setup):
    r = setup
    assert r.repo.prune().nothing_to_do
    # prove it: with the pack files out of reach it still succeeds
    os.rename(r.path / "packs", r.path / "packs.away")
    try:
        pr = r.repo.prune()
        assert pr.nothing_to_do and pr.errors == [] and pr.garbage_blobs == 0
        p = _cli("prune", "--repo", str(r.path))
        assert p.returncode == 0 and "nothing to do" in p.stdout.decode()
    finally:
        os.rename(r.path / "packs.away", r.path / "packs")
    assert r.repo.check().ok


def test_dry_runs_change_nothing(setup):
    r = setup
    before = _state(r)
    res = r.repo.forget(policy=Policy(last=1), dry_run=True, prune=True)
    assert res.dry_run and sorted(res.removed) == sorted(r.ids[:2]) and res.kept == [r.ids[2]]
    assert res.groups[0]["keep"][0]["reasons"] == ["keep-last"]
    assert _state(r) == before
    r.repo.forget([r.ids[0]])
    before = _state(r)
    pr = r.repo.prune(dry_run=True, repack_threshold=0.0)
    assert pr.dry_run and pr.packs_deleted >= 1 and pr.packs_rewritten >= 1 and pr.bytes_freed > 0
    assert _state(r) == before
    real = r.repo.prune(repack_threshold=0.0)
    assert (real.packs_deleted, real.packs_rewritten, real.blobs_freed) == \
        (pr.packs_deleted, pr.packs_rewritten, pr.blobs_freed)


def _cli(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "chunkrepo", *args], capture_output=True, env=e)


def test_cli_forget_policy_and_prune(setup):
    r = setup
    r.repo.close()
    repo = str(r.path)
    p = _cli("forget", "--repo", repo, "--keep-last", "2", "--dry-run")
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr
    assert f"keep    {r.ids[2]}" in out and "keep-last" in out and f"remove  {r.ids[0]}" in out
    assert "would remove 1 backups" in out
    p = _cli("forget", "--repo", repo, "--keep-within", "1y", "--keep-last", "1", "--json")
    d = json.loads(p.stdout)
    assert p.returncode == 0 and d["removed"] == [] and d["policy"] == {"last": 1, "within": "1y"}
    p = _cli("forget", "--repo", repo, "--keep-last", "1", "--prune", "--repack-threshold", "0%", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert sorted(d["removed"]) == sorted(r.ids[:2]) and d["prune"]["bytes_freed"] > 0
    p = _cli("prune", "--repo", repo, "--json")
    assert json.loads(p.stdout)["nothing_to_do"] is True
    with Repo(repo) as again:
        assert again.check(read_data=True).ok
        assert [b.id for b in again.list_backups()] == [r.ids[2]]


@pytest.mark.parametrize("args,msg", [
    ([], "no policy and no backup ids"),
    (["0123abcd"], "no backup with id"),
    (["--keep-last", "0"], "keeps nothing"),
    (["--keep-daily", "0", "--keep-within", "0d"], "keeps nothing"),
    (["--keep-within", "3 days"], "bad duration"),
    (["--keep-last", "1", "IDS"], "not both"),
])
def test_bad_forget_input_is_one_line_and_nonzero(setup, args, msg):
    r = setup
    args = [r.ids[0] if a == "IDS" else a for a in args]
    p = _cli("forget", "--repo", str(r.path), *args)
    err = p.stderr.decode()
    assert p.returncode != 0 and msg in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert len(r.repo.list_backups()) == 3


def test_prune_while_a_writer_holds_the_lock_is_refused(setup):
    r = setup
    r.repo.forget([r.ids[0]])
    with r.repo.repository.write_session():
        p = _cli("prune", "--repo", str(r.path))
    err = p.stderr.decode()
    assert p.returncode != 0 and "locked" in err and len(err.strip().splitlines()) == 1
    assert r.repo.prune().packs_deleted >= 1


_FORGET_PRUNE = """
import sys
from chunkrepo import Repo
with Repo(sys.argv[1]) as r:
    r.forget([sys.argv[2]], prune=True, repack_threshold=0.0)
"""


@pytest.mark.parametrize("point", FORGET_POINTS + PRUNE_POINTS)
def test_kill_at_each_step_of_forget_and_prune(tmp_path, point):
    r = build(tmp_path)
    b1, b2, b3 = r.ids
    live = _reachable(r.repo, [b2, b3])
    r.repo.close()
    p = subprocess.run([sys.executable, "-c", _FORGET_PRUNE, str(r.path), b1],
                       env=dict(os.environ, CHUNKREPO_CRASH_AT=point), capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    with Repo(r.path) as repo:
        r.repo = repo
        rep = repo.check(read_data=True)
        assert rep.ok, rep.errors
        for bid in (b2, b3):
            r.reads_back(bid)
        pr = repo.prune(repack_threshold=0.0)            # recovers first: an undone forget is back
        assert not pr.errors
        if any(b.id == b1 for b in repo.list_backups()):
            assert point == "forget-committed"
            r.reads_back(b1)
            repo.forget([b1], prune=True, repack_threshold=0.0)
        assert [b.id for b in repo.list_backups()] == [b2, b3]
        rep = repo.check(read_data=True)
        assert rep.ok, rep.errors
        assert rep.garbage_blobs == 0 and rep.pending_deletion == 0 and rep.unreferenced_packs == 0
        assert _indexed(repo) == live
        for bid in (b2, b3):
            r.reads_back(bid)
        r.write("s29", SMALL, 4242)
        r.reads_back(r.backup())
        assert repo.check().ok


def test_a_reader_on_an_old_snapshot_keeps_the_packs_it_reads(setup):
    """A reader holding an LMDB read transaction from before the prune reads the old packs
    after prune has repointed and dropped them: their files wait until it is done."""
    r = setup
    repo = r.repo
    b2 = r.ids[1]
    repo.forget([r.ids[0]])
    names = [n for n in sorted(r.content[b2]) if n.startswith("s")] + ["big1", "big3"]
    ids = {n: next(iter(repo.list_backup(b2, str(r.src / n)))).node.chunk_ids() for n in names}
    ix = repo.repository.index
    snapshot_ready, pruned, out, errors = threading.Event(), threading.Event(), {}, []
    old_packs = set()

    def reader():
        try:
            with Repo(r.path) as rr, rr.repository.index.read() as v:    # the snapshot tar/restore hold
                old_packs.update(v.chunk(c).pack for n in names for c in ids[n])
                out[names[0]] = b"".join(rr.repository.read_chunk(c, v) for c in ids[names[0]])
                snapshot_ready.set()
                pruned.wait(30)
                for n in names[1:]:
                    out[n] = b"".join(rr.repository.read_chunk(c, v) for c in ids[n])
                with rr.open_file(b2, r.src / "big3") as f:      # a fresh snapshot meanwhile
                    out["open_file"] = f.read()
        except Exception as e:        # reported below
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    assert snapshot_ready.wait(30)
    pr = repo.prune(repack_threshold=0.0)
    with ix.read() as v:
        pending = {p for p, _, _ in v.pending()}
    pruned.set()
    t.join(30)
    assert not errors, errors
    assert pr.packs_rewritten >= 1 and pr.packs_awaiting_deletion == len(pending) >= 1
    assert pending & old_packs                  # the reader did read packs prune had dropped
    for p in pending:
        assert (r.path / pack_name(p)).exists()
    for n in names:
        assert out[n] == r.content[b2][n], n
    assert out["open_file"] == r.content[b2]["big3"]
    assert repo.check(read_data=True).ok
    # the reader is gone: the next prune deletes what waited for it
    pr2 = repo.prune()
    assert pr2.files_deleted == len(pending) and pr2.packs_awaiting_deletion == 0
    assert not any((r.path / pack_name(p)).exists() for p in pending)
    rep = repo.check(read_data=True)
    assert rep.ok and rep.pending_deletion == 0, rep.errors
    r.reads_back(b2)


def test_a_damaged_pack_met_by_prune_is_reported_and_kept(setup):
    r = setup
    repo = r.repo
    repo.forget([r.ids[0]])
    ix = repo.repository.index
    with ix.read() as v:
        partial = [p for p in {g.pack for g in v.garbage()} if v.pack_info(p).dead_blobs < v.pack_info(p).count]
        victim = partial[0]
        live = [(c, e) for c, e in v.all_chunks() if e.pack == victim and e.refcount > 0]
    cid, e = live[0]
    path = r.path / pack_name(victim)
    with open(path, "r+b") as f:
        f.seek(e.offset + e.length // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    r.repo.close()
    p = _cli("prune", "--repo", str(r.path), "--repack-threshold", "0")
    err = p.stderr.decode()
    assert p.returncode == 1 and victim.hex() in err and "kept" in err and "Traceback" not in err
    assert "packs deleted" in p.stdout.decode()
    assert path.exists()                              # never deleted with live data in it
    with Repo(r.path) as again:
        with again.repository.index.read() as v:
            assert v.chunk(cid).pack == victim and v.pack_info(victim) is not None
        rep = again.check()
        assert rep.ok, rep.errors                         # structure and accounting still agree
        assert cid.hex() in " ".join(again.check(read_data=True).errors)


def test_api_and_prune_share_the_default_repack_threshold():
    """api.py states the default without importing ops.prune (short commands stay light)."""
    import inspect

    from chunkrepo import api
    from chunkrepo.ops import prune
    assert api.DEFAULT_REPACK_THRESHOLD == prune.DEFAULT_REPACK_THRESHOLD
    assert inspect.signature(Repo.prune).parameters["repack_threshold"].default == prune.DEFAULT_REPACK_THRESHOLD
