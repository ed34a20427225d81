"""The restore's placement hint (chunkrepo/placement.py): ext4's TOPDIR flag on the
target while the restore runs, taken off again after, the target's other flags kept."""

import os
import subprocess

import pytest

from chunkrepo.placement import TopDirHint
from tests.conftest import sha256_tree, write_random


def _attrs(path) -> str:
    """The flag letters `lsattr -d` prints for path (GNU e2fsprogs, the real reader)."""
    out = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"no ext2/3/4 flags here: {out.stderr.strip()}")
    return out.stdout.split()[0]


def _chattr(flags, path):
    subprocess.run(["chattr", flags, str(path)], check=True)


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


def _rel(digests: dict, root) -> dict:
    return {os.path.relpath(p, root): h for p, h in digests.items()}


def test_the_hint_sets_the_flag_and_takes_only_it_off_again(tmp_path):
    d = tmp_path / "target"
    d.mkdir()
    _attrs(d)
    _chattr("+d", d)                    # another flag, the user's: kept throughout
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        hint = TopDirHint(fd)
        assert hint.active
        assert "T" in _attrs(d) and "d" in _attrs(d)
        hint.mkdir(b"child", 0o750, fd)
        assert os.listdir(d) == ["child"]
        assert os.stat(d / "child").st_mode & 0o7777 == 0o750 & ~_umask()
        with pytest.raises(FileExistsError):
            os.mkdir(d / "other")
            hint.mkdir(b"other", 0o700, fd)     # an existing name: refused, no stray name left
        assert sorted(os.listdir(d)) == ["child", "other"]
        hint.close()
        hint.close()                    # a second close changes nothing
    finally:
        os.close(fd)
    assert "T" not in _attrs(d) and "d" in _attrs(d)


def test_a_target_marked_already_keeps_its_flag(tmp_path):
    d = tmp_path / "target"
    d.mkdir()
    _attrs(d)
    _chattr("+T", d)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        hint = TopDirHint(fd)
        assert not hint.active
        hint.close()
    finally:
        os.close(fd)
    assert "T" in _attrs(d)


def test_restore_leaves_the_targets_flags_as_they_were(repo, tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        (src / f"d{i}" / "sub").mkdir(parents=True)
        write_random(src / f"d{i}" / "sub" / "f", 5000 + i, seed=i)
    bid = repo.backup([str(src)]).id
    fresh, marked = tmp_path / "fresh", tmp_path / "marked"
    res = repo.restore(bid, fresh, str(src))
    assert res.errors == []
    marked.mkdir()
    _chattr("+T", marked)
    assert repo.restore(bid, marked, str(src)).errors == []
    assert "T" not in _attrs(fresh)
    assert "T" in _attrs(marked)
    for t in (fresh, marked):
        assert os.listdir(t) == ["src"]         # made under a random name, renamed: nothing else left
        assert _rel(sha256_tree(t / "src"), t / "src") == _rel(sha256_tree(src), src)
        # the flag was the target's only: nothing below it carries one
        assert all("T" not in _attrs(t / "src" / f"d{i}") for i in range(3))
