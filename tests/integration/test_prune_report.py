"""What prune reports: a dry run counts what a killed writer left (which a real prune's
recovery adopts first), and the prune that deletes the pack files an earlier prune kept
for its readers counts them."""

import os
import re
import signal
import subprocess
import sys

import pytest

from chunkrepo import Repo
from chunkrepo.repository.config import Config
from tests.conftest import age, write_random

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPARED = ("packs_deleted", "packs_rewritten", "blobs_freed", "bytes_freed", "garbage_blobs",
            "temporaries_removed", "temporary_bytes_removed")


def _cli(repo, *args, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("CHUNKREPO_STOP_AT", "CHUNKREPO_CRASH_AT")}
    e.update(PYTHONPATH=ROOT, **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "chunkrepo", *args, "--repo", str(repo)], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        write_random(src / f"f{i}", 1_500_000, seed=i)
        age(src / f"f{i}")
    path = tmp_path / "repo"
    first = tmp_path / "first"
    first.mkdir()
    write_random(first / "a", 200_000, seed=9)
    with Repo.init(path, Config(pack_size=1 << 20)) as repo:
        repo.backup([first])
    return path, src


def _packs(path):
    return {f for d in (path / "packs").iterdir() for f in d.iterdir() if not f.name.startswith(".tmp-")}


def test_a_dry_run_counts_what_a_killed_backup_left(setup):
    """A backup killed after sealing packs it never indexed, and a temporary file of a
    killed writer: the dry run reports what the real prune (after its recovery) does."""
    path, src = setup
    p = _cli(path, "backup", str(src), env={"CHUNKREPO_CRASH_AT": "pack-sealed:2"})
    p.communicate(timeout=120)
    assert p.returncode == -9
    tmp = path / "packs" / "ab" / f".tmp-{_dead_pid()}-0badf00d"
    tmp.parent.mkdir(exist_ok=True)
    tmp.write_bytes(b"x" * 5000)
    with Repo(path) as repo:
        before = _packs(path)
        dry = repo.prune(dry_run=True)
        assert _packs(path) == before and tmp.exists()       # a dry run changes nothing
        assert dry.packs_deleted >= 2 and dry.temporaries_removed >= 1 and not dry.not_counted
        real = repo.prune()
        assert {k: getattr(dry, k) for k in COMPARED} == {k: getattr(real, k) for k in COMPARED}
        assert not tmp.exists() and len(before - _packs(path)) == real.packs_deleted
        assert repo.check(read_data=True).ok


def test_a_dry_run_does_not_count_the_packs_of_a_running_writer(setup):
    """A writer stopped between sealing a pack and indexing it: the dry run must not
    count that pack as an interrupted writer's garbage, and says what it left out."""
    path, src = setup
    writer = _cli(path, "backup", str(src), env={"CHUNKREPO_STOP_AT": "pack-sealed"})
    assert os.WIFSTOPPED(os.waitpid(writer.pid, os.WUNTRACED)[1])
    try:
        p = _cli(path, "prune", "--dry-run")
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        lines = out.decode().splitlines()
        assert lines[0].startswith("prune: nothing to do")
        # (1 pack, or more: the stop holds the backup's process, and its reader processes,
        # if it has started them, seal on)
        assert re.match(r"  not counted: \d+ packs not in the index yet: a writer is running "
                        rf"\(PID {writer.pid} on ", lines[1]), lines[1]
    finally:
        os.kill(writer.pid, signal.SIGCONT)
        writer.communicate(timeout=120)
    assert writer.returncode == 0
    with Repo(path) as repo:
        assert repo.prune(dry_run=True).nothing_to_do and repo.check(read_data=True).ok


def test_the_prune_that_deletes_files_kept_for_readers_counts_them(setup):
    path, src = setup
    with Repo(path) as repo:
        bid = repo.backup([src]).id
        repo.forget([bid])
        with Repo(path) as reader, reader.repository.index.read():     # a reader's snapshot
            first = repo.prune()
        kept = _packs(path)
        with repo.repository.index.read() as v:
            waiting = {os.path.join(pid.hex()[:2], pid.hex()): size for pid, _, size in v.pending()}
    assert first.packs_deleted == first.packs_awaiting_deletion == len(waiting) >= 2
    assert first.bytes_awaiting_deletion == sum(waiting.values())
    assert all((path / "packs" / n).exists() for n in waiting) and len(kept) > len(waiting)
    p = _cli(path, "prune")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    mib = sum(waiting.values()) / (1 << 20)
    assert out.decode() == f"prune: {len(waiting)} pack files an earlier prune kept for its readers deleted, " \
                           f"{mib:.1f} MiB freed in " + out.decode().split(" in ")[-1]
    assert not any((path / "packs" / n).exists() for n in waiting)
    with Repo(path) as repo:
        rep = repo.prune()
        assert rep.nothing_to_do and rep.earlier_files_deleted == 0
        assert repo.check(read_data=True).ok
