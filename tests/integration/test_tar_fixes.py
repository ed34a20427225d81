"""`chunkrepo tar` (and restore) against GNU tar: ACLs, formats that cannot hold
xattrs, hard links between symlinks, and a backup forgotten and pruned while
it is read (the outside tester's report, docs/design.md "Reading: tar and restore")."""

import os
import shutil
import subprocess
import tarfile

import pytest
from click.testing import CliRunner

from chunkrepo.cli.main import cli
from chunkrepo.ops.read_snapshot import BackupRemoved
from chunkrepo.ops.restore import restore_tree
from chunkrepo.ops.tar_acl import acl_records
from chunkrepo.ops.tarout import write_tar
from tests.conftest import write_random

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "TZ": "UTC"}
HAVE_ACL_TOOLS = shutil.which("setfacl") is not None and shutil.which("getfacl") is not None
needs_acl = pytest.mark.skipif(not HAVE_ACL_TOOLS, reason="setfacl/getfacl (Debian: acl) not installed")


def _run(*args, cwd=None) -> str:
    return subprocess.run(list(map(str, args)), check=True, capture_output=True, env=ENV, cwd=cwd,
                          text=True, errors="surrogateescape").stdout


def _chunkrepo(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def _acl_tree(root):
    """Files and directories with every kind of ACL; qualifiers with no passwd entry (GNU tar
    then writes them as numbers, as chunkrepo always does)."""
    src = root / "src"
    (src / "named").mkdir(parents=True)
    (src / "defonly").mkdir()
    (src / "plain").mkdir()
    (src / "named" / "f").write_bytes(b"x")
    (src / "plain" / "g").write_bytes(b"y")
    _run("setfacl", "-m", "u:12345:rw-,g:54321:r--", src / "named" / "f")
    _run("setfacl", "-m", "u:23456:r-x", src / "named")                  # access only: empty default
    _run("setfacl", "-d", "-m", "u:12345:rwx,g:54321:r-x", src / "defonly")   # default only
    os.chmod(src / "defonly", 0o750)
    return src


def _pax(path) -> dict:
    with tarfile.open(path) as tf:
        return {m.name.rstrip("/"): {k: v for k, v in m.pax_headers.items() if k.startswith("SCHILY.")}
                for m in tf}


def _facls(top) -> dict:
    """getfacl -n of every entry below top, by relative path."""
    out = {}
    for d, dirs, files in os.walk(top):
        for name in [""] + dirs + files:
            p = os.path.join(d, name) if name else d
            rel = os.path.relpath(p, top)
            out[rel] = [line for line in _run("getfacl", "-n", "-p", p).splitlines()
                        if line and not line.startswith("#")]
    return out


@needs_acl
def test_acls_are_written_as_gnu_tar_writes_them_and_gnu_tar_restores_them(repo, tmp_path):
    src = _acl_tree(tmp_path)
    bid = repo.backup([str(src)]).id
    ours = tmp_path / "ours.tar"
    with open(ours, "wb") as f:
        repo.produce_tar(bid, f, str(src))
    gnu = tmp_path / "gnu.tar"
    _run("tar", "--format=posix", "--acls", "--xattrs", "-cf", gnu, "-C", "/", str(src).lstrip("/"))
    # the same records, byte for byte, SCHILY.acl.* and the xattr form (GNU tar writes both too)
    assert _pax(ours) == _pax(gnu)
    key = str(src / "named" / "f").lstrip("/")
    assert _pax(ours)[key]["SCHILY.acl.access"] == \
        "user::rw-\nuser:12345:rw-\ngroup::r--\ngroup:54321:r--\nmask::rw-\nother::r--\n"
    listing = _run("tar", "--acls", "-tvf", ours)
    assert sum(line.split()[0].endswith("+") for line in listing.splitlines()) == 3   # f, named, defonly
    # GNU tar sets them from SCHILY.acl.* whether or not it also takes the system.* attributes
    for opts in (["--acls"], ["--xattrs", "--xattrs-include=*", "--acls"]):
        dest = tmp_path / ("x" + str(len(opts)))
        dest.mkdir()
        _run("tar", *opts, "-xpf", ours, "-C", dest)
        assert _facls(dest / str(src).lstrip("/")) == _facls(src)


def test_acl_records_follow_gnu_tar_for_trivial_and_missing_acls():
    def xattr(*entries):
        return (2).to_bytes(4, "little") + b"".join(
            t.to_bytes(2, "little") + p.to_bytes(2, "little") + i.to_bytes(4, "little") for t, p, i in entries)
    base = [(0x01, 6, 0xFFFFFFFF), (0x04, 4, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)]
    assert acl_records([], 0o644, False) == {}
    assert acl_records([(b"system.posix_acl_access", xattr(*base))], 0o644, False) == {}    # trivial
    assert acl_records([(b"user.x", b"1")], 0o755, True) == {}
    # a directory with a default ACL only: the access ACL comes from the mode
    dflt = xattr(*base[:2], (0x08, 5, 7), (0x10, 7, 0xFFFFFFFF), base[2])
    assert acl_records([(b"system.posix_acl_default", dflt)], 0o750, True) == {
        "SCHILY.acl.access": "user::rwx\ngroup::r-x\nother::---\n",
        "SCHILY.acl.default": "user::rw-\ngroup::r--\ngroup:7:r-x\nmask::rwx\nother::r--\n"}
    # a value that is not a Linux ACL stays an xattr only
    assert acl_records([(b"system.posix_acl_access", b"\x01\x00\x00\x00junk")], 0o644, False) == {}


def test_gnu_and_ustar_refuse_xattrs_unless_told_to_leave_them_out(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    os.setxattr(src / "f", "user.foo", b"bar")
    bid = repo.backup([str(src)]).id
    for fmt in ("gnu", "ustar"):
        out = tmp_path / f"{fmt}.tar"
        r = _chunkrepo("tar", "--repo", repo.path, bid, src, "--format", fmt, "-o", out)
        assert r.exit_code == 1 and not out.exists()
        assert r.output.splitlines() == [f"chunkrepo: error: {src}/f: has extended attributes or ACLs, which "
                                         f"a {fmt} tar cannot hold; use --format pax, or --no-xattrs to "
                                         f"leave them out"]
        r = _chunkrepo("tar", "--repo", repo.path, bid, src, "--format", fmt)     # stdout: not a byte
        assert r.exit_code == 1 and r.stdout_bytes == b""
        r = _chunkrepo("tar", "--repo", repo.path, bid, src, "--format", fmt, "--no-xattrs", "-o", out)
        assert r.exit_code == 0, r.output
        assert _run("tar", "--xattrs", "-tf", out).split() == [str(src).lstrip("/") + "/",
                                                               str(src / "f").lstrip("/")]
    # pax keeps them, and leaves them out when asked
    out = tmp_path / "p.tar"
    assert _chunkrepo("tar", "--repo", repo.path, bid, src, "--no-xattrs", "-o", out).exit_code == 0
    assert not any(_pax(out).values())
    assert "--no-xattrs" in _chunkrepo("tar", "--help").output


def test_hard_links_between_symlinks_are_kept_like_gnu_tar(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.symlink("target", src / "sym")
    os.link(src / "sym", src / "symhard", follow_symlinks=False)
    os.mkfifo(src / "ff")
    os.link(src / "ff", src / "ffhard")         # GNU tar does not keep these: neither do we
    bid = repo.backup([str(src)]).id
    ours, gnu = tmp_path / "ours.tar", tmp_path / "gnu.tar"
    with open(ours, "wb") as f:
        repo.produce_tar(bid, f, str(src))
    _run("tar", "--format=posix", "-cf", gnu, "-C", "/", str(src).lstrip("/"))

    def members(path):      # GNU tar: in directory order, the first name met is the symlink
        with tarfile.open(path) as tf:
            return sorted((m.name.rpartition("/")[2], m.type, os.path.basename(m.linkname)) for m in tf
                          if m.name.rpartition("/")[2] in ("ff", "ffhard", "sym", "symhard"))
    fifos = [("ff", tarfile.FIFOTYPE, ""), ("ffhard", tarfile.FIFOTYPE, "")]
    assert members(ours) == fifos + [("sym", tarfile.SYMTYPE, "target"), ("symhard", tarfile.LNKTYPE, "sym")]
    assert members(gnu) in (members(ours), fifos + [("sym", tarfile.LNKTYPE, "symhard"),
                                                    ("symhard", tarfile.SYMTYPE, "target")])
    rel = str(src).lstrip("/")
    lines = [str(line) for line in _chunkrepo("ls", "--repo", repo.path, bid, src).output.splitlines()]
    assert any(line.startswith("h") and line.endswith(f"symhard link to {rel}/sym") for line in lines)
    # restore and GNU tar's extraction of our archive: one inode for the symlink's two names
    dest = tmp_path / "r"
    repo.restore(bid, dest, str(src))
    x = tmp_path / "x"
    x.mkdir()
    _run("tar", "-xf", ours, "-C", x)
    for top in (dest / "src", x / rel):
        st, st2 = os.lstat(top / "sym"), os.lstat(top / "symhard")
        assert st.st_ino == st2.st_ino and st.st_nlink == 2 and os.readlink(top / "symhard") == "target"
        assert os.lstat(top / "ff").st_ino != os.lstat(top / "ffhard").st_ino


class _PruneOnFirstWrite:
    """An output file that forgets and prunes the backup being written at its first write
    (from tar's writing thread: the archive has begun, most of it is still to be read)."""

    def __init__(self, f, repo, bid):
        self.f, self.repo, self.bid, self.report = f, repo, bid, None

    def write(self, data):
        if self.report is None:
            self.report = self.repo.forget([self.bid], prune=True).prune
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def _two_backups(repo, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i in range(1500):       # ~24 MiB of one-chunk files: more than tar reads ahead
        write_random(a / f"f{i:04d}", 16 << 10, seed=i)
    (b / "other").write_bytes(b"kept")
    bid = repo.backup([str(a)]).id
    repo.backup([str(b)])
    return a, bid


def test_a_tar_is_whole_when_its_backup_is_forgotten_and_pruned_meanwhile(repo, tmp_path):
    src, bid = _two_backups(repo, tmp_path)
    out = tmp_path / "a.tar"
    with open(out, "wb") as f:
        hook = _PruneOnFirstWrite(f, repo, bid)
        stats = repo.produce_tar(bid, hook)
    assert hook.report.blobs_freed >= 1500           # the prune did remove the backup's chunks
    assert stats["errors"] == [] and stats["files"] == 1500
    dest = tmp_path / "x"
    dest.mkdir()
    _run("tar", "-xf", out, "-C", dest)
    for i in (0, 777, 1499):
        assert (dest / str(src).lstrip("/") / f"f{i:04d}").read_bytes() == (src / f"f{i:04d}").read_bytes()
    assert repo.check().ok


def test_a_backup_removed_before_the_read_began_is_named_so_not_damaged(repo, tmp_path):
    src, bid = _two_backups(repo, tmp_path)
    root = bytes.fromhex(repo.get_backup(bid).root)
    r = repo.repository
    repo.forget([bid])
    # forgotten, not pruned: still whole in the index, so still read whole
    dest = tmp_path / "r1"
    assert restore_tree(r, root, str(dest), str(src), backup_id=bid).errors == []
    repo.prune()
    with pytest.raises(BackupRemoved, match=f"backup {bid} was removed .forget and prune."):
        with open(tmp_path / "a.tar", "wb") as f:
            write_tar(r, root, f, backup_id=bid)
    assert os.path.getsize(tmp_path / "a.tar") == 0
    with pytest.raises(BackupRemoved, match="nothing was read"):
        restore_tree(r, root, str(tmp_path / "r2"), str(src), backup_id=bid)
    assert not (tmp_path / "r2").exists()
