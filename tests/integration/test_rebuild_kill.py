"""rebuild-index killed with SIGKILL at each point of its write order (docs/format.md,
"Rebuilding the index"): readers see the complete old index or the complete new one,
never a partial one; the next rebuild still has the old index as its fallback; the next
writer removes what the killed one left.  Also: a backup record file that is missing
while the old index has the backup is written again, not dropped."""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from chunkrepo import Repo
from tests.conftest import age, write_random

# the switch as where renameat2(RENAME_EXCHANGE) is missing: two renames
TWO_RENAMES = ("from chunkrepo.repository import index_dirs\n"
               "index_dirs._exchange = lambda a, b: False\n"
               "from chunkrepo.cli import main\n"
               "main()\n")


def cli(*args, crash=None, two_renames=False, check=None):
    env = dict(os.environ)
    env.pop("CHUNKREPO_CRASH_AT", None)
    if crash:
        env["CHUNKREPO_CRASH_AT"] = crash
    head = ["-c", TWO_RENAMES] if two_renames else ["-m", "chunkrepo"]
    p = subprocess.run([sys.executable, *head, *args], capture_output=True, env=env)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stderr.decode())
    if crash is None:
        assert b"Traceback" not in p.stderr, p.stderr.decode()
    return p


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Three backups of a tree of 5 directories (registering each takes steps)."""
    base = tmp_path_factory.mktemp("rebuild")
    src = base / "src"
    ids = []
    with Repo.init(base / "repo") as repo:
        for b in range(3):
            for d in range(5):
                (src / f"d{d}").mkdir(parents=True, exist_ok=True)
                write_random(src / f"d{d}" / f"f{b}", 20_000 + 1000 * d, seed=10 * b + d)
                age(src / f"d{d}" / f"f{b}", 30)
            ids.append(repo.backup([src]).id)
    return base / "repo", ids, src


@pytest.fixture
def copy(pristine, tmp_path):
    path, ids, src = pristine
    shutil.copytree(path, tmp_path / "repo")
    return str(tmp_path / "repo"), ids, str(src)


def listed(path):
    p = cli("list-backups", "--repo", path, check=0)
    return sorted(line.split()[0] for line in p.stdout.decode().splitlines())


def entries(path):
    return sorted(n for n in os.listdir(path) if n.startswith("index"))


def data_inode(path):
    return os.stat(os.path.join(path, "index", "data.mdb")).st_ino


@pytest.mark.parametrize("point,switched", [("backup-registering:2", False), ("rebuild-built", False),
                                            ("rebuild-ready", False), ("rebuild-switched", True)])
def test_a_killed_rebuild_leaves_the_old_index_or_the_new_one_whole(copy, point, switched):
    path, ids, _ = copy
    old = data_inode(path)
    p = cli("rebuild-index", "--repo", path, crash=point)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    assert len(entries(path)) == 2          # index/ and what the rebuild left beside it
    assert listed(path) == sorted(ids)      # a reader: every backup, from a whole index
    assert (data_inode(path) != old) == switched
    cli("check", "--read-data", "--repo", path, check=0)
    cli("check", "--repair", "--repo", path, check=0)      # a writer removes the leftover
    assert entries(path) == ["index"]


def test_a_rebuild_killed_between_its_two_renames_is_switched_in_by_the_next_open(copy):
    path, ids, _ = copy
    old = data_inode(path)
    p = cli("rebuild-index", "--repo", path, crash="rebuild-index-moved", two_renames=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    assert [n.split("-")[0] for n in entries(path)] == ["index.ready", "index.replaced"]
    assert listed(path) == sorted(ids)      # a reader finishes the switch: no lock needed
    assert data_inode(path) != old and len(entries(path)) == 2
    cli("backup", "--repo", path, copy[2], check=0)
    assert entries(path) == ["index"]
    cli("check", "--read-data", "--repo", path, check=0)
    p = cli("rebuild-index", "--repo", path, two_renames=True, check=0)    # uninterrupted
    assert entries(path) == ["index"] and len(listed(path)) == 4


def test_an_absent_index_rebuilt_when_opened_and_killed_leaves_no_partial_one(copy):
    path, ids, _ = copy
    shutil.rmtree(os.path.join(path, "index"))
    p = cli("list-backups", "--repo", path, crash="backup-registering:2")
    assert p.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(path, "index", "data.mdb"))
    assert listed(path) == sorted(ids)      # rebuilt whole, and the killed one's removed
    assert entries(path) == ["index"]


def _damage_record(path, bid):
    name = os.path.join(path, "backups", bid)
    with open(name, "r+b") as f:
        f.seek(10)
        f.write(b"#")
    return name


def _zero_trailer(path):
    """Zero the trailer of the biggest pack: only an old index knows its blobs then."""
    packs = [os.path.join(d, n) for d, _, ns in os.walk(os.path.join(path, "packs")) for n in ns]
    pack = max(packs, key=os.path.getsize)
    size = os.path.getsize(pack)
    with open(pack, "r+b") as f:
        f.seek(size - 4096)
        f.write(bytes(4096))


@pytest.mark.parametrize("damage", ["record", "trailer"])
def test_a_killed_rebuild_keeps_the_old_index_for_the_next_one(copy, damage):
    path, ids, _ = copy
    if damage == "record":
        _damage_record(path, ids[0])
        want = f"backup {ids[0]}: its record file is damaged; registered from the old index"
    else:
        _zero_trailer(path)
        want = "verified and were adopted"
    p = cli("rebuild-index", "--repo", path, crash="backup-registering:1")
    assert p.returncode == -signal.SIGKILL
    p = cli("rebuild-index", "--repo", path, check=1)
    assert want in p.stderr.decode(), p.stderr.decode()
    assert listed(path) == sorted(ids) and entries(path) == ["index"]


def test_a_legacy_index_old_is_the_fallback_and_removed_after_the_rebuild(copy):
    """What an earlier version's killed rebuild left: the old index as index.old-PID and a
    partial index/ (here: one without the backup whose record file is damaged)."""
    path, ids, _ = copy
    shutil.copytree(os.path.join(path, "index"), os.path.join(path, "index.old-4242"))
    with Repo(path) as repo:
        ix = repo.repository.index
        with ix.env.begin(write=True) as txn:
            txn.delete(ids[0].encode(), db=ix.backups)
    _damage_record(path, ids[0])
    p = cli("rebuild-index", "--repo", path, check=1)
    assert f"backup {ids[0]}: its record file is damaged; registered from the old index" in p.stderr.decode()
    assert listed(path) == sorted(ids) and entries(path) == ["index"]


def test_rebuild_writes_a_missing_record_file_again_from_the_old_index(copy):
    path, ids, _ = copy
    name = os.path.join(path, "backups", ids[1])
    good = open(name, "rb").read()
    os.remove(name)
    p = cli("rebuild-index", "--repo", path, check=1)
    assert f"backup {ids[1]}: its record file was missing; written again" in p.stderr.decode()
    assert open(name, "rb").read() == good
    assert listed(path) == sorted(ids)
    cli("check", "--read-data", "--repo", path, check=0)
