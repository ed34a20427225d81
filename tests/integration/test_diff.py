"""chunkrepo diff: two backups, or a backup and the live tree; restic's markers, --json."""

import json
import os

import pytest
from click.testing import CliRunner

from chunkrepo.cli.main import cli
from tests.conftest import age, write_random


def _xattrs_supported(path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
        os.removexattr(path, "user.probe")
        return True
    except OSError:
        return False


def _source(root):
    root.mkdir()
    (root / "same").mkdir()
    for i in range(20):                      # an unchanged subtree of 21 directories
        d = root / "same" / f"d{i:02}"
        d.mkdir()
        (d / "f").write_text(f"{i}\n")
    (root / "edit.txt").write_text("before\n")
    (root / "chmod.txt").write_text("chmod\n")
    (root / "touch.txt").write_text("touch\n")
    (root / "gone.txt").write_text("gone\n")
    (root / "gonedir").mkdir()
    (root / "gonedir" / "inner.txt").write_text("inner\n")
    (root / "tolink").write_text("becomes a symlink\n")
    (root / "todir").write_text("becomes a directory\n")
    (root / "linked").write_text("will get a second name\n")
    (root / "xattr.txt").write_text("x\n")
    write_random(root / "big.bin", 600_000, seed=1)
    for p in root.rglob("*"):
        if p.is_file():
            age(p)
    return root


def _change(root):
    (root / "edit.txt").write_text("after, longer\n")
    os.chmod(root / "chmod.txt", 0o600)
    st = os.stat(root / "touch.txt")
    os.utime(root / "touch.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    (root / "gone.txt").unlink()
    (root / "gonedir" / "inner.txt").unlink()
    (root / "gonedir").rmdir()
    (root / "added.txt").write_text("new\n")
    (root / "newdir").mkdir()
    (root / "newdir" / "a").write_text("a\n")
    (root / "tolink").unlink()
    os.symlink("edit.txt", root / "tolink")
    (root / "todir").unlink()
    (root / "todir").mkdir()
    (root / "todir" / "inside").write_text("inside\n")
    os.link(root / "linked", root / "linked2")
    if _xattrs_supported(root / "xattr.txt"):
        os.setxattr(root / "xattr.txt", "user.note", b"hello")


def _run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture
def two_backups(tmp_path, repo):
    src = _source(tmp_path / "src")
    first = repo.backup([src]).id
    _change(src)
    second = repo.backup([src]).id
    return repo, src, first, second


def _rel(changes, src):
    prefix = os.fsencode(src)
    return {c.path[len(prefix):].decode() or "/": c for c in changes if c.path.startswith(prefix)}


def test_diff_of_two_backups(two_backups):
    repo, src, first, second = two_backups
    d = repo.diff(first, second)
    changes = list(d)
    got = {p: (c.change, c.fields) for p, c in _rel(changes, src).items()}
    xattrs = _xattrs_supported(src / "touch.txt")
    expected = {
        "/": ("U", ("mtime",)),
        "/edit.txt": ("M", ("content", "mtime")),
        "/chmod.txt": ("U", ("mode",)),
        "/touch.txt": ("U", ("mtime",)),
        "/gone.txt": ("-", ()),
        "/gonedir": ("-", ()),
        "/gonedir/inner.txt": ("-", ()),
        "/added.txt": ("+", ()),
        "/newdir": ("+", ()),
        "/newdir/a": ("+", ()),
        "/tolink": ("T", ()),
        "/todir": ("T", ()),
        "/todir/inside": ("+", ()),
        "/linked": ("U", ("links",)),
        "/linked2": ("+", ()),
    }
    if xattrs:
        expected["/xattr.txt"] = ("U", ("xattrs",))
    assert got == expected
    assert _rel(changes, src)["/tolink"].old_kind == "f" and _rel(changes, src)["/tolink"].kind == "l"
    assert _rel(changes, src)["/todir"].kind == "d"
    # tree order: each directory before its entries, names sorted
    paths = [c.path for c in changes]
    assert paths.index(os.fsencode(src) + b"/gonedir") + 1 == paths.index(os.fsencode(src) + b"/gonedir/inner.txt")
    assert [p for p in paths if p.startswith(os.fsencode(src) + b"/")] == sorted(
        p for p in paths if p.startswith(os.fsencode(src) + b"/"))
    s = d.stats
    assert (s.added, s.removed, s.type_changed) == (5, 3, 2)
    assert s.modified == 1 and s.metadata_only == 4 + xattrs + (len(changes) - len(got))   # + parents of src
    assert s.bytes_added == len("after, longer\n") + len("new\n") + len("a\n") + len("inside\n") \
        + len("will get a second name\n") + len("becomes a symlink\n") * 0
    sd = s.to_dict()
    assert sd["only_left"] == 3 and sd["only_right"] == 5 and sd["different"] == len(changes) - 8


def test_identical_subtrees_are_not_descended(two_backups, tmp_path):
    repo, src, first, second = two_backups
    d = repo.diff(first, second)
    list(d)
    # read: the records of '/', each parent of src, src, and the changed dirs on both sides
    # (gonedir, newdir, todir) -- never one of the 21 directories under same/
    depth = len(src.parts)         # '/' plus each component's record above src, then src
    assert d.stats.subtrees_skipped >= 1
    assert d.stats.trees_read == 2 * depth + 3
    assert d.stats.equal >= 1 and d.stats.trees_read < 21

    same = repo.diff(first, first)
    assert list(same) == [] and same.stats.trees_read == 0 and same.stats.subtrees_skipped == 1


def test_path_filter(two_backups):
    repo, src, first, second = two_backups
    changes = list(repo.diff(first, second, path=src / "todir"))
    assert [(c.path, c.change) for c in changes] == [
        (os.fsencode(src / "todir"), "T"), (os.fsencode(src / "todir" / "inside"), "+")]
    only_left = list(repo.diff(first, second, path=src / "gonedir"))
    assert [c.change for c in only_left] == ["-", "-"]


def test_diff_against_the_live_tree(tmp_path, repo):
    src = _source(tmp_path / "src")
    bid = repo.backup([src]).id
    assert [c for c in repo.diff(bid, src)] == []
    _change(src)
    d = repo.diff(bid, str(src))
    got = {p: (c.change, c.fields) for p, c in _rel(list(d), src).items()}
    assert got["/edit.txt"] == ("M", ("content", "mtime"))
    assert got["/touch.txt"] == ("U", ("mtime",))       # same size, read and found equal
    assert got["/chmod.txt"] == ("U", ("mode",))
    assert got["/tolink"] == ("T", ()) and got["/todir/inside"] == ("+", ())
    assert got["/gonedir/inner.txt"] == ("-", ()) and got["/linked2"] == ("+", ())
    assert "/same" not in got and "/big.bin" not in got
    assert d.stats.files_read == 1            # only touch.txt needed reading

    # same size and mtime, other bytes: only --content sees it
    st = os.stat(src / "big.bin")
    write_random(src / "big.bin", 600_000, seed=2)
    os.utime(src / "big.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "/big.bin" not in _rel(list(repo.diff(bid, src)), src)
    thorough = repo.diff(bid, src, content=True)
    assert _rel(list(thorough), src)["/big.bin"].fields == ("content",)
    assert thorough.stats.files_read > 20


def test_cli_text_json_and_errors(two_backups, tmp_path):
    repo, src, first, second = two_backups
    r = _run("diff", "--repo", repo.path, first[:10], "latest", src)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert f"M    {src}/edit.txt" in lines
    assert f"+    {src}/newdir/" in lines
    assert f"-    {src}/gonedir/inner.txt" in lines
    assert lines[-1].startswith("added: 5, removed: 3, modified: 1,")     # the summary (stderr)

    r = _run("diff", "--repo", repo.path, first, second, src, "--json")
    assert r.exit_code == 0, r.output
    objs = [json.loads(line) for line in r.output.splitlines()]
    summary = objs[-1]["summary"]
    assert summary["only_left"] == 3 and summary["only_right"] == 5 and summary["equal"] >= 1
    by_path = {o["path"]: o for o in objs[:-1]}
    assert by_path[f"{src}/chmod.txt"] == {"path": f"{src}/chmod.txt", "change": "U", "type": "f",
                                          "fields": ["mode"]}
    assert by_path[f"{src}/tolink"] == {"path": f"{src}/tolink", "change": "T", "type": "l", "old_type": "f"}

    r = _run("diff", "--repo", repo.path, first, src)          # live tree
    assert r.exit_code == 0 and f"+    {src}/added.txt" in r.output.splitlines()

    for args, msg in [((first, "0123abcd"), "'0123abcd' is neither a backup nor an existing path"),
                      (("ffff", second), "no backup with id 'ffff'"),
                      ((first, second, "/no/such/path"), "/no/such/path: in neither backup"),
                      ((first, src, "/x"), "a path filter goes with two backups")]:
        r = _run("diff", "--repo", repo.path, *args)
        assert r.exit_code == 1, r.output
        assert r.output.splitlines() == [f"chunkrepo: error: {r.output.split('error: ', 1)[1].strip()}"]
        assert msg in r.output
