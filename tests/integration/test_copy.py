"""chunkrepo copy: backups into another repository, sending only what it lacks, resumable."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from chunkrepo import Repo
from chunkrepo.cli.main import cli
from chunkrepo.index import KIND_CHUNK
from chunkrepo.repository.config import Config
from chunkrepo.repository.packs import KIND_DATA, read_trailer
from tests.conftest import age, write_random
from tests.integration.test_progress import _stderr


def _tree(root, seed, n=6, size=700_000):
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    for i in range(n):
        write_random(root / f"f{i}.bin", size, seed=seed * 100 + i)
    (root / "sub" / "small.txt").write_text(f"small {seed}\n")
    os.symlink("f0.bin", root / "link")
    os.link(root / "f1.bin", root / "sub" / "hard.bin")
    for p in [root / "sub" / "small.txt", *root.glob("f*.bin")]:
        age(p)
    return root


def _run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def _copy_json(a, b, *extra):
    r = _run("copy", "--from", a, "--to", b, "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _ls(repo_path, bid):
    r = _run("ls", "--repo", repo_path, bid)
    assert r.exit_code == 0, r.output
    return r.output


def _data_blobs_in_packs(repo_path):
    """Every data chunk stored in B's packs, duplicates included."""
    with Repo(repo_path) as r:
        st = r.repository.storage
        return [e.id for n in st.list("packs") for e in read_trailer(st, n) if e.kind == KIND_DATA]


def _assert_same_backups(a, b, ids, tmp_path):
    with Repo(b) as rb:
        assert rb.check(read_data=True).ok
    for bid in ids:
        assert _ls(a, bid) == _ls(b, bid)
        outs = []
        for repo_path in (a, b):
            out = Path(tempfile.mkdtemp(dir=tmp_path)) / "r"
            with Repo(repo_path) as r:
                r.restore(bid, out)
            outs.append(out)
        files_a = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*"))
        assert files_a == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*"))
        for rel in files_a:
            pa, pb = outs[0] / rel, outs[1] / rel
            if pa.is_file() and not pa.is_symlink():
                assert pa.read_bytes() == pb.read_bytes()


@pytest.fixture
def two_repos(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    Repo.init(a).close()
    Repo.init(b, Config(pack_size=1 << 20)).close()
    return a, b


def test_full_then_incremental_copy(tmp_path, two_repos):
    a, b = two_repos
    src = _tree(tmp_path / "src", seed=1)
    with Repo(a) as r:
        first = r.backup([src]).id
    res = _copy_json(a, b)
    assert res["backups_copied"] == [first]
    with Repo(a) as r:
        n_chunks = sum(1 for _ in _index_chunks(r))
    assert res["chunks_sent"] == n_chunks
    _assert_same_backups(a, b, [first], tmp_path)
    with Repo(a) as ra, Repo(b) as rb:   # the very same record, id and all
        assert ra.repository.storage.get(f"backups/{first}") == rb.repository.storage.get(f"backups/{first}")

    write_random(src / "new.bin", 1_500_000, seed=77)
    age(src / "new.bin")
    (src / "sub" / "small.txt").write_text("edited\n")
    age(src / "sub" / "small.txt")
    with Repo(a) as r:
        second = r.backup([src]).id
    dry = _copy_json(a, b, "--dry-run")
    res = _copy_json(a, b)
    assert dry["backups_copied"] == res["backups_copied"] == [second]
    assert res["backups_present"] == [first]
    # only the new file's chunks and the edited small file: 2 chunks of new.bin + 1
    assert res["chunks_sent"] == dry["chunks_sent"] == 3
    assert res["bytes_sent"] == 1_500_000 + len("edited\n")
    assert res["chunks_present"] >= 6
    assert sorted(_data_blobs_in_packs(b)) == sorted(set(_data_blobs_in_packs(b)))   # nothing sent twice
    _assert_same_backups(a, b, [first, second], tmp_path)

    again = _copy_json(a, b)     # idempotent
    assert again["backups_copied"] == [] and again["chunks_sent"] == 0 and again["trees_sent"] == 0


def _index_chunks(r):
    with r.repository.index.read() as v:
        yield from (k for k, _ in v.all_chunks())


def test_copy_into_repo_sharing_data_sends_only_the_rest(tmp_path, two_repos):
    a, b = two_repos
    src = _tree(tmp_path / "src", seed=2)
    with Repo(a) as r:
        bid = r.backup([src]).id
    with Repo(b) as r:        # B backed up the same files itself
        r.backup([src / "f0.bin", src / "f1.bin"])
    res = _copy_json(a, b, bid[:8])
    assert res["backups_copied"] == [bid]
    assert res["chunks_present"] >= 2            # f0 and f1 (and the hard link to f1) were there
    with Repo(a) as r:
        total = sum(1 for _ in _index_chunks(r))
    assert res["chunks_sent"] < total
    _assert_same_backups(a, b, [bid], tmp_path)


def test_copy_selected_and_latest(tmp_path, two_repos):
    a, b = two_repos
    src = _tree(tmp_path / "src", seed=3, n=2, size=10_000)
    with Repo(a) as r:
        one = r.backup([src]).id
        (src / "x").write_text("x")
        two = r.backup([src]).id
    res = _copy_json(a, b, "latest")
    assert res["backups_copied"] == [two]
    with Repo(b) as r:
        assert [x.id for x in r.list_backups()] == [two]
    assert _copy_json(a, b)["backups_copied"] == [one]


_COPY = """
import sys
from chunkrepo import Repo
with Repo(sys.argv[1]) as a, Repo(sys.argv[2]) as b:
    a.copy_to(b)
"""


def _copy_subprocess(a, b, env=None):
    return subprocess.Popen([sys.executable, "-c", _COPY, str(a), str(b)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _big_source(tmp_path, two_repos):
    a, b = two_repos
    src = _tree(tmp_path / "src", seed=4, n=8, size=900_000)
    with Repo(a) as r:
        bid = r.backup([src]).id
    return a, b, bid


def test_copy_killed_at_a_checkpoint_resumes_without_resending(tmp_path, two_repos):
    a, b, bid = _big_source(tmp_path, two_repos)
    total = _copy_json(a, b, "--dry-run")["chunks_sent"]
    env = dict(os.environ, CHUNKREPO_CRASH_AT="checkpoint-committed:3")
    p = _copy_subprocess(a, b, env)
    _, err = p.communicate()
    assert p.returncode == -signal.SIGKILL, err.decode()
    with Repo(b) as r:
        assert r.list_backups() == []
        committed = sum(1 for _ in _index_chunks(r))
    assert 0 < committed < total
    res = _copy_json(a, b)
    assert res["backups_copied"] == [bid]
    assert res["chunks_sent"] <= total - committed     # what was committed is not sent again
    assert sorted(_data_blobs_in_packs(b)) == sorted(set(_data_blobs_in_packs(b)))
    _assert_same_backups(a, b, [bid], tmp_path)


def test_copy_killed_at_any_moment_resumes(tmp_path, two_repos):
    a, b, bid = _big_source(tmp_path, two_repos)
    p = _copy_subprocess(a, b)
    packs = b / "packs"
    while p.poll() is None and not any(packs.rglob("*")):   # wait for the first sealed pack or the end
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    res = _copy_json(a, b)
    with Repo(b) as r:
        assert [x.id for x in r.list_backups()] == [bid]
    assert res["backups_copied"] in ([bid], [])
    _assert_same_backups(a, b, [bid], tmp_path)


def test_errors_are_one_line(tmp_path, two_repos):
    a, b = two_repos
    src = _tree(tmp_path / "src", seed=5, n=2, size=1000)
    with Repo(a) as r:
        r.backup([src])
    for args, msg in [
        (("--from", a, "--to", b, "deadbeef"), "no backup with id 'deadbeef'"),
        (("--from", tmp_path / "nope", "--to", b), "no repository at"),
        (("--from", a, "--to", tmp_path / "nope"), "no repository at"),
        (("--from", a, "--to", a), "same repository"),
    ]:
        r = _run("copy", *args)
        assert r.exit_code != 0
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("chunkrepo: error: ") and msg in lines[0], r.output
    with Repo(b) as r:
        assert r.list_backups() == []


def test_target_locked_by_a_writer(tmp_path, two_repos):
    a, b = two_repos
    src = _tree(tmp_path / "src", seed=6, n=2, size=1000)
    with Repo(a) as r:
        r.backup([src])
    with Repo(b) as rb, rb.repository.write_session():
        r = _run("copy", "--from", a, "--to", b)
    assert r.exit_code != 0
    assert r.output.startswith("chunkrepo: error: repository is locked by"), r.output
    assert _copy_json(a, b)["backups_copied"]     # free again: it goes through


def test_a_record_the_target_holds_unreferenced_is_still_descended(tmp_path, two_repos):
    """B holds the backup's directory records with refcount 0 (its own backup of the same
    tree, forgotten) but lost some of their chunks (as when prune drops a dead pack and keeps
    another): the copy must send those chunks, not trust the records."""
    a, b = two_repos
    src = _tree(tmp_path / "src", seed=7, n=3, size=300_000)
    with Repo(a) as r:
        bid = r.backup([src]).id
    with Repo(b) as r:
        own = r.backup([src]).id
        with Repo(a) as ra:
            assert r.get_backup(own).root == ra.get_backup(bid).root     # the very same records
        r.forget([own])
        with r.repository.index.read() as v:
            lost = [cid for cid, _ in v.all_chunks()][:2]
        with r.repository.index.write() as w:
            for cid in lost:
                e = w.drop_blob(KIND_CHUNK, cid)
                w.add_dead_copy(KIND_CHUNK, e.pack, cid, e.length)
        assert r.check().ok
    res = _copy_json(a, b)
    assert res["backups_copied"] == [bid]
    assert res["chunks_sent"] == 2
    _assert_same_backups(a, b, [bid], tmp_path)


def test_progress_only_on_a_terminal(tmp_path, two_repos):
    a, b = two_repos
    src = _tree(tmp_path / "src", seed=8, n=2, size=200_000)
    with Repo(a) as r:
        r.backup([src])
    cmd = [sys.executable, "-m", "chunkrepo", "copy", "--from", str(a), "--to", str(b)]
    code, on_tty = _stderr(cmd, tty=True)
    assert code == 0, on_tty
    assert "\r" in on_tty and "copy" in on_tty and "1 backups, 3 chunks sent" in on_tty
    Repo.init(tmp_path / "C").close()
    code, piped = _stderr(cmd[:-1] + [str(tmp_path / "C")], tty=False)
    assert code == 0, piped
    assert "\r" not in piped and piped.startswith("copied 1 backups (0 already there); sent 3 chunks")
