"""Fixes from an outside test of the command line: usage errors are one line (exit 2),
--exclude patterns match as GNU tar's do, restore names the target path it could not
create, diff escapes names as ls does, ls refuses a file given as 'file/' and ''."""

import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from chunkrepo.cli import cli


def run(*args, env=None, check=True):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "chunkrepo", *args], capture_output=True, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {p.stderr.decode()}")
    return p


# -- usage errors --------------------------------------------------------------

@pytest.mark.parametrize("args, where, says", [
    (["ls", "--jsn", "latest"], "chunkrepo ls", "no such option '--jsn'"),
    (["lss"], "chunkrepo", "no such command 'lss'"),
    (["--bogus", "ls"], "chunkrepo", "no such option '--bogus'"),
    (["restore", "latest", "/etc"], "chunkrepo restore", "missing option '--target'"),
    (["restore", "latest", "/etc", "--target", "{file}"], "chunkrepo restore", "is a file"),
    (["list-backups", "--last", "0"], "chunkrepo list-backups", "0 is not in the range"),
    (["forget", "--keep-daily", "-1"], "chunkrepo forget", "-1 is not in the range"),
    (["diff", "latest"], "chunkrepo diff", "missing argument 'B|PATH|URL'"),
    (["cache", "bogus"], "chunkrepo cache", "no such command 'bogus'"),
    (["backup"], "chunkrepo backup", "give at least one PATH or --files-from"),   # raised by the command
    (["ls", "latest", ""], "chunkrepo ls", "an empty path"),
])
def test_a_usage_error_is_one_line_naming_the_help_and_exits_2(tmp_path, args, where, says):
    (tmp_path / "afile").write_text("x")
    args = [a.replace("{file}", str(tmp_path / "afile")) for a in args]
    r = CliRunner().invoke(cli, args, env={"CHUNKREPO_REPO": str(tmp_path / "repo")}, prog_name="chunkrepo")
    assert r.exit_code == 2, r.output
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("chunkrepo: error: ") and says in lines[0]
    assert lines[0].endswith(f" (see '{where} --help')")
    assert not (tmp_path / "repo").exists()        # refused before anything was done


def test_usage_error_as_a_process_and_help_unchanged(tmp_path):
    p = run("restore", "latest", "/etc", check=False)
    assert p.returncode == 2
    assert p.stderr.decode() == ("chunkrepo: error: missing option '--target' "
                                 "(see 'chunkrepo restore --help')\n")
    p = run("restore", "--help")
    assert p.stdout.decode().startswith("Usage: chunkrepo restore [OPTIONS] BACKUP [PATH]")
    p = run("ls", "--repo", str(tmp_path / "none"), "latest", check=False)     # a runtime error: 1
    assert p.returncode == 1 and p.stderr.decode().count("\n") == 1


# -- --exclude -----------------------------------------------------------------

def _tree(root):
    for d in ("src/a/b", "x/a/b", "ab/c", "q/cache", "a/f"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in ("src/a/b/f", "x/a/b/g", "ab/c/h", "src/a/k", "q/cache/z", "top.log", "src/y.log", "a/f/i"):
        (root / f).write_text(f)
    return root


def _backed_up(repo, root, excludes) -> set:
    res = repo.backup([root], excludes=excludes)
    base = os.fsencode(root).lstrip(b"/") + b"/"
    return {e.path[len(base):].decode() for e in repo.list_backup(res.id, root) if e.path.startswith(base)}


def _tar_kept(root, pattern) -> set:
    """What GNU tar archives of root with --exclude pattern (paths relative to root)."""
    out = subprocess.run(["tar", "-cf", "-", "--exclude", pattern, "-C", str(root.parent), root.name],
                         capture_output=True, check=True).stdout
    names = subprocess.run(["tar", "-tf", "-"], input=out, capture_output=True, check=True).stdout
    pre = root.name + "/"
    return {n.rstrip("/")[len(pre):] for n in names.decode().splitlines() if n.startswith(pre)} - {""}


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is the reference")
@pytest.mark.parametrize("pattern", ["a/b", "src/a", "b/f", "*/a", "a*c", "src/*.log", "[ab]/b",
                                     "**/b", "t/src", "cache"])
def test_relative_exclude_patterns_match_at_any_depth_as_gnu_tars(repo, tmp_path, pattern):
    root = _tree(tmp_path / "t")
    kept = _backed_up(repo, root, [pattern])
    assert kept == _tar_kept(root, pattern)
    assert kept != _tar_kept(root, "no-such-name")        # it did leave something out


def test_exclude_rules_beyond_tars(repo, tmp_path):
    root = _tree(tmp_path / "t")
    everything = _backed_up(repo, root, [])
    assert "src/a/b/f" in everything and "a/f" in everything
    # restic's '**/': zero or more directories (tar's '*' needs at least the '/')
    assert "a/f" not in _backed_up(repo, root, ["a/**/f"])
    assert "a/f" in _backed_up(repo, root, ["a/*/f"])
    # a trailing '/' is dropped (tar matches nothing with it)
    assert _backed_up(repo, root, ["cache/"]) == everything - {"q/cache", "q/cache/z"}
    # a final '/**' leaves out the directory itself too
    assert {p for p in _backed_up(repo, root, ["src/**"]) if p.startswith("src")} == set()
    # anchored: the whole path only
    assert _backed_up(repo, root, [f"{root}/src/a"]) == everything - {"src/a", "src/a/b", "src/a/b/f", "src/a/k"}
    assert _backed_up(repo, root, ["/src/a", "/a/b"]) == everything
    # a component boundary: 'b/c' is not '/ab/c', nor 'b' 'ab'
    kept = _backed_up(repo, root, ["b/c", "b"])
    assert "ab/c/h" in kept and "src/a/b" not in kept


def test_a_url_backup_excludes_by_the_same_rules(repo, url_mem):
    fs, root = url_mem
    for rel in ("src/a/b/f", "x/a/b/g", "ab/c/h", "top.log"):
        fs.pipe(f"{root}/{rel}", rel.encode())
    res = repo.backup([f"memory:/{root}"], excludes=["a/b", "/ab", "*.log"])
    assert {e.path for e in repo.list_backup(res.id)} == {b"src", b"src/a", b"x", b"x/a"}


def test_exclude_on_the_command_line(tmp_path):
    root = _tree(tmp_path / "t")
    repo = str(tmp_path / "repo")
    run("init", "--repo", repo)
    bid = run("backup", "--repo", repo, str(root), "--exclude", "a/b", "--exclude", "src/a").stdout.split()[-1]
    names = run("ls", "--repo", repo, "--simple", bid.decode(), str(root)).stdout.decode().splitlines()
    rel = {n.rstrip("/")[len(str(root)) - 1:] for n in names}      # ls names have no leading /
    assert "/x/a" in rel and "/x/a/b" not in rel and "/src/a" not in rel and "/src/y.log" in rel
    assert "in GNU tar" in run("backup", "--help").stdout.decode()


# -- restore into a target that refuses an entry ------------------------------

def test_restore_error_names_the_target_path_it_could_not_create(tmp_path):
    src = tmp_path / "src" / "d"
    src.mkdir(parents=True)
    (src / "f").write_text("x")
    repo = str(tmp_path / "repo")
    run("init", "--repo", repo)
    run("backup", "--repo", repo, str(src))
    target = tmp_path / "ro"
    target.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(target)], capture_output=True).returncode != 0:
            pytest.skip("no chattr +i here: root writes into any directory")
    else:
        target.chmod(0o500)
    try:
        p = run("restore", "--repo", repo, "latest", str(src), "--target", str(target), check=False)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(target)], check=True)
        target.chmod(0o700)
    assert p.returncode == 1
    err = p.stderr.decode().splitlines()
    assert err[0].startswith(f"chunkrepo: {src}: cannot restore to {target}/d: ")
    assert err[0].endswith(("Operation not permitted", "Permission denied"))
    assert err[-1] == "chunkrepo: error: restore finished with 1 errors"


# -- diff names ------------------------------------------------------------------

@pytest.mark.parametrize("lc", ["C", "C.UTF-8"])
def test_diff_escapes_names_as_ls_does(tmp_path, lc):
    base = tmp_path / "n"
    d = os.path.join(os.fsencode(base), b"new\ndir")
    os.makedirs(d)
    for name in (b"x\xfey", "é\t\\".encode()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(b"a")
    repo = str(tmp_path / "repo")
    env = {"LC_ALL": lc}
    run("init", "--repo", repo)
    run("backup", "--repo", repo, str(base))
    listed = run("ls", "--repo", repo, "--simple", "latest", str(base), env=env).stdout.decode().splitlines()
    shutil.rmtree(d)
    out = run("diff", "--repo", repo, "latest", str(base), env=env).stdout.decode().splitlines()
    removed = [ln[len("-    /"):] for ln in out if ln.startswith("-")]
    assert len(out) == 4 and len(removed) == 3          # U for n/, three names removed: one line each
    assert removed == listed[1:]
    assert listed[2].endswith("/new\\ndir/x\\376y")
    assert listed[3].endswith("/new\\ndir/" + ("\\303\\251" if lc == "C" else "é") + "\\t\\\\")


# -- ls paths tar would not accept -----------------------------------------------

def test_ls_refuses_a_file_given_with_a_trailing_slash(tmp_path):
    src = _tree(tmp_path / "t")
    repo = str(tmp_path / "repo")
    run("init", "--repo", repo)
    run("backup", "--repo", repo, str(src))
    p = run("ls", "--repo", repo, "latest", f"{src}/top.log/", check=False)
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.decode() == f"chunkrepo: error: {src}/top.log/: not a directory in the backup\n"
    assert run("ls", "--repo", repo, "--simple", "latest", f"{src}/top.log").stdout.decode().endswith("top.log\n")
    out = run("ls", "--repo", repo, "--simple", "--nonrecursive", "latest", f"{src}/src/").stdout.decode()
    assert out.splitlines()[0].endswith("t/src/") and len(out.splitlines()) == 3
    assert run("ls", "--repo", repo, "--simple", "latest", "//").stdout.decode().startswith("tmp/")
