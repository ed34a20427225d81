"""The command line as a user meets it: subprocesses, exit codes, one-line errors."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import age


def run(*args, env=None, input=None, check=True):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "chunkrepo", *args], capture_output=True, env=e, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {p.stderr.decode()}")
    return p


@pytest.fixture
def src(tmp_path):
    s = tmp_path / "src"
    (s / "sub").mkdir(parents=True)
    (s / "a.txt").write_text("alpha\n")
    (s / "sub" / "b.txt").write_text("beta\n")
    for p in (s / "a.txt", s / "sub" / "b.txt"):
        age(p)
    return s


def test_backup_prints_id_last_and_summary_on_stderr(tmp_path, src):
    repo = str(tmp_path / "repo")
    run("init", "--repo", repo)
    p = run("backup", "--repo", repo, str(src))
    bid = p.stdout.decode().strip().splitlines()[-1]
    assert len(bid) == 32 and int(bid, 16) >= 0
    assert "2 files" in p.stderr.decode() or "3 files" in p.stderr.decode()
    listing = run("list-backups", "--repo", repo).stdout.decode()
    assert bid in listing
    docs = json.loads(run("list-backups", "--repo", repo, "--json").stdout)
    assert docs[0]["id"] == bid and docs[0]["end_ns"] >= docs[0]["start_ns"]
    bid2 = run("backup", "--repo", repo, str(src)).stdout.decode().split()[-1]
    docs = json.loads(run("list-backups", "--repo", repo, "--json").stdout)    # one array, not lines
    assert [d["id"] for d in docs] == [bid, bid2]
    assert json.loads(run("list-backups", "--repo", repo, "--json", "--last", "1").stdout)[0]["id"] == bid2


def test_backup_json_has_the_promised_keys(tmp_path, src):
    repo = str(tmp_path / "repo")
    run("init", "--repo", repo)
    d = json.loads(run("backup", "--repo", repo, str(src), "--json").stdout)
    for k in ("id", "files", "dirs", "bytes_read", "bytes_new", "files_borrowed",
              "files_changed_during_backup", "errors"):
        assert k in d
    assert d["bytes_read"] == 11 and d["errors"] == []
    d2 = json.loads(run("backup", "--repo", repo, str(src), "--json").stdout)
    assert d2["files_borrowed"] == 2 and d2["bytes_read"] == 0


def test_env_repo_and_default_repo_created_on_first_backup(tmp_path, src):
    data_home = tmp_path / "xdg"
    p = run("backup", str(src), env={"XDG_DATA_HOME": str(data_home), "CHUNKREPO_REPO": ""})
    assert "created repository" in p.stderr.decode()
    assert (data_home / "chunkrepo" / "repo" / "config").exists()
    p = run("list-backups", env={"CHUNKREPO_REPO": str(data_home / "chunkrepo" / "repo")})
    assert len(p.stdout.splitlines()) == 1


def test_files_from_null_separated_stores_exactly_the_listed_paths(tmp_path, src):
    repo = str(tmp_path / "repo")
    run("init", "--repo", repo)
    listed = b"\0".join([os.fsencode(src), os.fsencode(src / "sub"), os.fsencode(src / "sub" / "b.txt")])
    p = run("backup", "--repo", repo, "--files-from", "-", "-0", input=listed)
    bid = p.stdout.decode().split()[-1]
    names = run("ls", "--repo", repo, bid, str(src), "--simple").stdout.decode().splitlines()
    rel = sorted(n for n in names if "src/" in n)
    assert any(n.endswith("src/sub/b.txt") for n in rel)
    assert not any(n.endswith("a.txt") for n in rel)


def test_skipped_file_gives_exit_status_3(tmp_path, src):
    repo = str(tmp_path / "repo")
    run("init", "--repo", repo)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(src / "sock"))
    try:
        p = run("backup", "--repo", repo, str(src), check=False)
    finally:
        s.close()
    assert p.returncode == 3
    assert "sock: is a socket" in p.stderr.decode()
    assert len(p.stdout.decode().strip()) == 32


@pytest.mark.parametrize("args, message", [
    (("ls", "--repo", "{missing}", "latest"), "no repository at"),
    (("ls", "--repo", "{repo}", "0123456789"), "no backup with id"),
    (("ls", "--repo", "{repo}", "latest", "/no/such/path"), "not in the backup"),
    (("backup", "--repo", "{repo}", "{tmp}/nothing-here"), "no such file or directory"),
    (("init", "--repo", "{repo}"), "already holds"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, src, args, message):
    repo = str(tmp_path / "repo")
    run("init", "--repo", repo)
    run("backup", "--repo", repo, str(src))
    fmt = {"repo": repo, "missing": str(tmp_path / "missing"), "tmp": str(tmp_path)}
    p = run(*[a.format(**fmt) for a in args], check=False)
    err = p.stderr.decode()
    assert p.returncode not in (0, 3)
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_ambiguous_prefix(tmp_path, src):
    from chunkrepo import Repo
    repo = str(tmp_path / "repo")
    ids = set()
    with Repo.init(repo) as r:
        for i in range(40):   # enough backups that two share a first hex digit
            (src / "a.txt").write_text(f"v{i}\n")
            ids.add(r.backup([src]).id)
    firsts = [i[0] for i in ids]
    dup = next(c for c in firsts if firsts.count(c) > 1)
    p = run("ls", "--repo", repo, dup, check=False)
    assert p.returncode == 1 and "matches" in p.stderr.decode()


def test_short_commands_do_not_import_the_heavy_operations():
    """ls and list-backups start fast: the CLI and the API import backup, check, prune,
    copy, diff, restore, tar and the snapshot machinery only when a command uses them."""
    code = ("import sys, chunkrepo, chunkrepo.cli.main; "
            "print(sorted(m for m in sys.modules if m.startswith(('chunkrepo.ops.backup', "
            "'chunkrepo.ops.check', 'chunkrepo.ops.prune', 'chunkrepo.ops.copy', 'chunkrepo.ops.diff', "
            "'chunkrepo.ops.restore', 'chunkrepo.ops.tarout', 'chunkrepo.ops.snapshot.store', "
            "'chunkrepo.snapshots', 's3fs', 'botocore'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_small_input_mistakes_get_precise_one_line_errors(tmp_path, src):
    repo = str(tmp_path / "repo")
    run("init", "--repo", repo)
    p = run("backup", "--repo", repo, "--files-from", "-", input=b"", check=False)
    assert p.returncode == 1
    assert p.stderr.decode() == "chunkrepo: error: --files-from -: no paths listed, nothing to back up\n"
    bid = run("backup", "--repo", repo, str(src) + "/", str(src)).stdout.decode().split()[-1]
    assert json.loads(run("list-backups", "--repo", repo, "--json").stdout)[0]["subset"] == str(src)   # one path
    p = run("ls", "--repo", repo, bid, "no/such/path", check=False)
    assert p.returncode == 1
    assert p.stderr.decode() == "chunkrepo: error: /no/such/path: not in the backup (it has no /no)\n"
    p = run("ls", "--repo", repo, bid, str(src / "nope"), check=False)
    assert p.stderr.decode() == f"chunkrepo: error: {src}/nope: not in the backup\n"
    p = run("restore", "--repo", repo, bid, "--target", "", check=False)
    assert p.returncode == 2 and "--target" in p.stderr.decode() and "empty path" in p.stderr.decode()


def test_restore_into_the_repository_is_refused(tmp_path, src):
    repo = tmp_path / "repo"
    run("init", "--repo", str(repo))
    bid = run("backup", "--repo", str(repo), str(src)).stdout.decode().split()[-1]
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    for target in (repo / "restored", repo / "packs" / "x", tmp_path / "link" / "restored"):
        if target.parent.name == "link":
            (tmp_path / "link").symlink_to(repo)          # the same place by another name
        p = run("restore", "--repo", str(repo), bid, "--target", str(target), check=False)
        assert p.returncode == 1 and "lies inside the repository" in p.stderr.decode(), p.stderr
        assert p.stderr.decode().count("\n") == 1
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before
    assert run("check", "--repo", str(repo), "--read-data").returncode == 0
