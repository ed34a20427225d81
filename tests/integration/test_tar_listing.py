"""`chunkrepo tar` archives and `chunkrepo ls` listings against real GNU tar and tarfile.

One source tree with every file type is backed up once (module fixture); the
pax archive of it must list, under GNU tar 1.34, exactly as tvf_lines/tf_lines
do, and extract (GNU tar and tarfile) to the source again, field by field.
"""

import hashlib
import io
import os
import random
import socket
import stat
import subprocess
import sys
import tarfile
import time

import pytest

from chunkrepo import Repo
from chunkrepo.errors import ChunkrepoError
from chunkrepo.ops.listing import tf_lines, tvf_lines
from chunkrepo.ops.tarout import TarFormatError
from chunkrepo.repository.packs import KIND_DATA, read_trailer
from tests.conftest import write_random

ROOT = os.geteuid() == 0
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "TZ": "UTC"}
T0 = 1_700_000_000  # a fixed second for file times

LONG_NAME = "n" * 210
DEEP = ["d" * 60] * 4 + ["f" * 50]          # a path of more than 255 characters
ODD_NAME = "with space \\ back\\slash\ttab"
SPARSE_PARTS = [(1 << 20, b"x" * 5000), (5 << 20, b"y" * 100)]


def _set_time(path, sec, ns=0):
    os.utime(path, ns=(0, sec * 10**9 + ns), follow_symlinks=False)


def build_tree(src):
    """Every file type chunkrepo stores; returns what the checks need to know."""
    info = {"xattrs": False, "devices": False}
    src.mkdir()
    sub = src / "sub"
    sub.mkdir()
    (src / "small.txt").write_text("hello tar\n" * 3)
    (src / "empty").write_bytes(b"")
    write_random(src / "big.bin", 6 << 20, seed=7)
    with open(src / "sparse", "wb") as f:           # holes at start, middle and end
        f.truncate(8 << 20)
        for off, data in SPARSE_PARTS:
            f.seek(off)
            f.write(data)
    with open(src / "sparse-many", "wb") as f:      # > 4 + 21 extents, a map > 512 bytes
        for i in range(40):
            f.seek(i * (256 << 10) + 4096 * (i % 3))
            f.write(b"%d" % i * 1000)
        f.truncate(11 << 20)
    os.symlink("small.txt", src / "link")
    os.symlink("/no/such/target", src / "dangling")
    os.link(src / "small.txt", src / "hard")
    (sub / "inner.txt").write_text("inner\n")
    os.link(sub / "inner.txt", sub / "inner-link")
    (sub / "nested").mkdir()
    (sub / "nested" / "deep.txt").write_text("deep\n")
    os.mkfifo(src / "fifo")
    if ROOT:
        os.mknod(src / "chr", 0o620 | stat.S_IFCHR, os.makedev(4, 64))
        os.mknod(src / "blk", 0o640 | stat.S_IFBLK, os.makedev(259, 3))
        os.chmod(src / "chr", 0o620)            # past the umask
        info["devices"] = True
    (src / "sticky").mkdir()
    os.chmod(src / "sticky", 0o1777)
    for name, mode in (("suid", 0o4755), ("sgid", 0o2710), ("suid-nox", 0o6644)):
        (src / name).write_bytes(b"#!\n")
        os.chmod(src / name, mode)
    with open(os.fsencode(src) + b"/caf\xe9", "wb") as f:      # not UTF-8
        f.write(b"latin1 name\n")
    (src / "caf\u00e9 \u00fc").write_text("utf-8 name\n")
    (src / ODD_NAME).write_text("odd name\n")
    (src / LONG_NAME).write_text("long name\n")
    deep = src.joinpath(*DEEP)
    deep.parent.mkdir(parents=True)
    deep.write_text("deep path\n")
    assert len(str(deep.relative_to(src))) > 255
    (src / "nobody-owns").write_text("numeric ids\n")
    if ROOT:
        os.lchown(src / "nobody-owns", 12345, 12345)
    try:
        os.setxattr(src / "small.txt", "user.comment", b"hello \x00\xff binary")
        os.setxattr(src / "sub", "user.dir", b"on a directory")
        info["xattrs"] = True
    except OSError:
        pass
    # times: ns precision, and one before the epoch (same minute either way it rounds)
    for i, p in enumerate(sorted(src.rglob("*"), key=lambda p: -len(p.parts))):
        _set_time(p, T0 + 3600 * i, 123_456_789 if i % 2 else 0)
    _set_time(src / "empty", -2, 500_000_000)
    _set_time(src, T0)
    return info


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("tarworld")
    src = base / "src"
    info = build_tree(src)
    repo = Repo.init(base / "repo")
    res = repo.backup([src])
    assert res.errors == []
    tar_path = base / "all.tar"
    with open(tar_path, "wb") as f:
        stats = repo.produce_tar(res.id, f)
    yield {"base": base, "src": src, "repo": repo, "id": res.id, "tar": tar_path,
           "stats": stats, **info}
    repo.close()


def gnu(args, env=ENV, input=None):
    p = subprocess.run(["tar"] + args, env=env, input=input, capture_output=True)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p.stdout.decode("utf-8", "surrogateescape").splitlines(), p.stderr


def listing(world, start="/", recursive=True):
    return list(world["repo"].list_backup(world["id"], start, recursive))


def in_utc(fn, *a, tz="UTC"):
    old = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        return fn(*a)
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


# -- listing ------------------------------------------------------------------
def test_ls_equals_gnu_tar_tvf_line_for_line(world):
    expected, err = gnu(["tvf", str(world["tar"])])
    assert err == b""                       # no warnings either (e.g. hdrcharset)
    got = in_utc(lambda: list(tvf_lines(listing(world), utf8=True)))
    assert got == expected
    # sanity: the interesting lines are there, as GNU tar prints them
    src = str(world["src"]).lstrip("/")
    parts = src.split("/")
    assert [line.split(" ")[-1] for line in got[:len(parts)]] == \
        ["/".join(parts[:i + 1]) + "/" for i in range(len(parts))]        # tmp/, tmp/.../
    text = "\n".join(got) + "\n"
    assert f" {src}/caf\\351\n" in text
    assert f" {src}/caf\u00e9 \u00fc\n" in text
    assert f" {src}/with space \\\\ back\\\\slash\\ttab\n" in text
    assert f" {src}/link -> small.txt\n" in text
    assert f" {src}/small.txt link to {src}/hard\n" in text
    assert "\nhrw-r--r-- " in text
    assert "\ndrwxrwxrwt " in text and "\n-rwsr-xr-x " in text
    assert "\n-rwx--s--- " in text and "\n-rwSr-Sr-- " in text
    if world["devices"]:
        assert "\ncrw--w---- root/root      4,64 " in text
        assert "\nbrw-r----- root/root     259,3 " in text
        assert "\n-rw-r--r-- 12345/12345      12 " in text
    assert f" {8 << 20} " in text                              # sparse: the real size


def test_tf_equals_gnu_tar_tf(world):
    expected, _ = gnu(["tf", str(world["tar"])])
    assert list(tf_lines(listing(world), utf8=True)) == expected


def test_ls_in_the_c_locale_escapes_all_non_ascii(world):
    env = dict(ENV, LC_ALL="C")
    expected, _ = gnu(["tvf", str(world["tar"])], env=env)
    assert in_utc(lambda: list(tvf_lines(listing(world), utf8=False))) == expected
    assert any(line.endswith("/caf\\303\\251 \\303\\274") for line in expected)


def test_ls_dates_are_local_time_from_tz(world, tmp_path):
    """tar reads TZ; so do we (after time.tzset)."""
    src = tmp_path / "times"
    src.mkdir()
    instants = {
        "pre-epoch-frac": -60 * 10**9 - 500_000_000,     # GNU rounds toward zero: 23:59, not 23:58
        "dst-start-ny": 1678604400 * 10**9 + 1,           # 2023-03-12 07:00 UTC
        "dst-end-ny": 1699164000 * 10**9 - 1,
        "paris-dst": 1679792400 * 10**9 + 5,
        "ns": T0 * 10**9 + 999_999_999,
    }
    for name, ns in instants.items():
        (src / name).write_bytes(b"")
        os.utime(src / name, ns=(0, ns))
    repo = world["repo"]
    res = repo.backup([src])
    with open(tmp_path / "t.tar", "wb") as f:
        repo.produce_tar(res.id, f, start=str(src))
    seen = set()
    for tz in ("UTC", "America/New_York", "Europe/Paris", "Asia/Kathmandu", "XYZ-5:30:17"):
        expected, _ = gnu(["tvf", str(tmp_path / "t.tar")], env=dict(ENV, TZ=tz))
        got = in_utc(lambda: list(tvf_lines(repo.list_backup(res.id, str(src)), utf8=True)), tz=tz)
        assert got == expected, tz
        seen.add(tuple(got))
    assert len(seen) == 5                    # the zones really gave different listings
    utc = in_utc(lambda: list(tvf_lines(repo.list_backup(res.id, str(src)), utf8=True)))
    assert any(" 1969-12-31 23:59 " in line and "pre-epoch" in line for line in utc)


def test_date_column_arithmetic_matches_localtime():
    """The date column is computed from each UTC day's offset, not by localtime per
    file: it must agree with localtime/strftime for any instant, in zones with DST,
    odd offsets, historic second offsets and leap seconds (right/)."""
    from chunkrepo.ops.listing import _Dates
    rnd = random.Random(5)
    zones = ["UTC", "XYZ-5:30:17", "America/New_York", "Europe/Paris", "Asia/Kathmandu",
             "Africa/Monrovia", "right/UTC"]

    def check():
        dates, bad = _Dates(), []
        for i in range(20000):
            sec = rnd.randrange(-2**35, 2**36) if i % 2 else rnd.randrange(1_600_000_000, 1_800_000_000)
            ns = sec * 10**9 + rnd.randrange(10**9)
            s = ns // 10**9 + (1 if ns < 0 and ns % 10**9 else 0)
            try:
                want = time.strftime("%Y-%m-%d %H:%M", time.localtime(s))
            except (OverflowError, OSError, ValueError):
                want = str(s).rjust(6)
            if dates(ns) != want:
                bad.append((ns, dates(ns), want))
        return bad

    for tz in zones:
        if "/" in tz and not os.path.exists(os.path.join("/usr/share/zoneinfo", tz)):
            continue                    # a zone this machine has no data for
        assert in_utc(check, tz=tz) == [], tz


def test_subset_and_nonrecursive(world, tmp_path):
    repo, bid, src = world["repo"], world["id"], world["src"]
    cases = [(str(src / "sub"), True), (str(src / "sub"), False), (str(src), False),
             (str(src / "sparse"), True), (str(src / "small.txt"), True)]
    for start, rec in cases:
        out = tmp_path / "s.tar"
        with open(out, "wb") as f:
            stats = repo.produce_tar(bid, f, start=start, recursive=rec)
        expected, _ = gnu(["tvf", str(out)])
        entries = list(repo.list_backup(bid, start, rec))
        assert in_utc(lambda: list(tvf_lines(entries, utf8=True))) == expected, (start, rec)
        assert list(tf_lines(entries, utf8=True)) == gnu(["tf", str(out)])[0]
        assert stats["entries"] == len(expected)
    sub = str(src / "sub").lstrip("/")
    names, _ = gnu(["tf", str(tmp_path / "s.tar")])
    assert names == [str(src / "small.txt").lstrip("/")]   # a lone link name: no link member
    with open(tmp_path / "sub.tar", "wb") as f:
        repo.produce_tar(bid, f, start=str(src / "sub"), recursive=False)
    assert gnu(["tf", str(tmp_path / "sub.tar")])[0] == [
        f"{sub}/", f"{sub}/inner-link", f"{sub}/inner.txt", f"{sub}/nested/"]


# -- extraction ---------------------------------------------------------------
def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _tree_items(src):
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(src)):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, os.fsencode(src))] = p
    return out


def compare_trees(src, dest, check_xattrs, check_mtime_ns=True, sparse_kept=True):
    """dest (an extracted copy of src) matches src field by field."""
    want, got = _tree_items(src), _tree_items(dest)
    assert sorted(got) == sorted(want)
    inodes = {}
    for rel, sp in want.items():
        dp = got[rel]
        a, b = os.lstat(sp), os.lstat(dp)
        assert stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode), rel
        if stat.S_ISLNK(a.st_mode):
            assert os.readlink(sp) == os.readlink(dp), rel
            continue
        assert stat.S_IMODE(a.st_mode) == stat.S_IMODE(b.st_mode), rel
        assert (a.st_uid, a.st_gid) == (b.st_uid, b.st_gid), rel
        if check_mtime_ns:
            assert a.st_mtime_ns == b.st_mtime_ns, rel
        else:
            assert a.st_mtime_ns // 10**9 == b.st_mtime_ns // 10**9, rel
        if stat.S_ISREG(a.st_mode):
            assert a.st_size == b.st_size and _sha(sp) == _sha(dp), rel
            if a.st_nlink > 1:
                inodes.setdefault(a.st_ino, set()).add(b.st_ino)
            if sparse_kept and a.st_blocks * 512 < a.st_size:
                assert b.st_blocks * 512 < b.st_size, f"{rel}: no longer sparse"
        if stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode):
            assert a.st_rdev == b.st_rdev, rel
        if check_xattrs:
            names = [n for n in os.listxattr(sp, follow_symlinks=False) if n.startswith("user.")]
            assert {n: os.getxattr(sp, n) for n in names} == \
                {n: os.getxattr(dp, n) for n in os.listxattr(dp) if n.startswith("user.")}, rel
    assert inodes and all(len(v) == 1 for v in inodes.values())    # links still share inodes


def test_gnu_tar_extracts_the_source_again(world, tmp_path):
    dest = tmp_path / "x"
    dest.mkdir()
    p = subprocess.run(["tar", "xf", str(world["tar"]), "-C", str(dest), "--xattrs",
                        "--xattrs-include=user.*", "--numeric-owner"],
                       env=ENV, capture_output=True)
    assert p.returncode == 0, p.stderr
    compare_trees(world["src"], dest / str(world["src"]).lstrip("/"), world["xattrs"])
    s = world["stats"]
    assert s["sparse"] == 2 and s["hardlinks"] == 2 and s["skipped"] == 0
    assert s["content_bytes"] < (6 << 20) + 600_000          # the holes (19 MB) were not stored


def test_tarfile_reads_the_archive(world, tmp_path):
    src = world["src"]
    prefix = str(src).lstrip("/")
    with tarfile.open(world["tar"], encoding="utf-8", errors="surrogateescape") as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == [os.fsdecode(e.path) for e in listing(world)]
        by = {m.name: m for m in members}
        assert f"{prefix}/caf\udce9" in by and f"{prefix}/{LONG_NAME}" in by
        assert f"{prefix}/" + "/".join(DEEP) in by
        for name in ("big.bin", "sparse", "sparse-many", "small.txt", "caf\u00e9 \u00fc"):
            m = by[f"{prefix}/{name}"]
            assert hashlib.sha256(tf.extractfile(m).read()).hexdigest() == _sha(src / name), name
        sp = by[f"{prefix}/sparse"]
        assert sp.issparse() and sp.size == 8 << 20
        many = by[f"{prefix}/sparse-many"]
        assert many.issparse() and len([x for x in many.sparse if x[1]]) == 40
        hard = by[f"{prefix}/small.txt"]
        assert hard.islnk() and hard.linkname == f"{prefix}/hard"
        assert by[f"{prefix}/link"].linkname == "small.txt"
        assert by[f"{prefix}/fifo"].isfifo()
        small = by[f"{prefix}/hard"]
        ns = os.lstat(src / "hard").st_mtime_ns
        assert small.pax_headers["mtime"] == f"{ns // 10**9}.{ns % 10**9:09d}".rstrip("0")
        if world["xattrs"]:
            assert small.pax_headers["SCHILY.xattr.user.comment"] == "hello \x00\udcff binary"
        if world["devices"]:
            c = by[f"{prefix}/chr"]
            assert c.ischr() and (c.devmajor, c.devminor) == (4, 64)
            assert by[f"{prefix}/nobody-owns"].uid == 12345
        out = tmp_path / "py"
        tf.extractall(out, members=[by[f"{prefix}/sparse"], by[f"{prefix}/big.bin"]])
    assert _sha(out / prefix / "sparse") == _sha(src / "sparse")


def test_gnu_format(world, tmp_path):
    repo = world["repo"]
    out = tmp_path / "g.tar"
    if world["xattrs"]:     # gnu format has no xattrs: refused (as GNU tar does) before a byte is out
        with pytest.raises(TarFormatError, match="gnu tar cannot hold"), open(out, "wb") as f:
            repo.produce_tar(world["id"], f, tar_format="gnu")
        assert out.stat().st_size == 0
    with open(out, "wb") as f:
        stats = repo.produce_tar(world["id"], f, tar_format="gnu", xattrs=False)
    assert stats["sparse"] == 2
    if world["xattrs"]:
        assert stats["xattrs_dropped"] >= 3       # left out when asked: counted, not hidden
    expected, _ = gnu(["tvf", str(out)])
    assert in_utc(lambda: list(tvf_lines(listing(world), utf8=True))) == expected
    with tarfile.open(out) as tf:
        sp = tf.getmember(str(world["src"] / "sparse").lstrip("/"))
        assert sp.type == tarfile.GNUTYPE_SPARSE and sp.size == 8 << 20
        assert hashlib.sha256(tf.extractfile(sp).read()).hexdigest() == _sha(world["src"] / "sparse")
        many = tf.getmember(str(world["src"] / "sparse-many").lstrip("/"))
        assert len([x for x in many.sparse if x[1]]) == 40
    dest = tmp_path / "x"
    dest.mkdir()
    gnu(["xf", str(out), "-C", str(dest)])
    compare_trees(world["src"], dest / str(world["src"]).lstrip("/"), False, check_mtime_ns=False)


def test_ustar_refuses_what_it_cannot_hold_and_fills_holes(world, tmp_path):
    repo, bid, src = world["repo"], world["id"], world["src"]
    with pytest.raises(TarFormatError) as ei:
        with open(tmp_path / "u.tar", "wb") as f:
            repo.produce_tar(bid, f, tar_format="ustar", xattrs=False)
    assert isinstance(ei.value, ChunkrepoError) and "ustar" in str(ei.value)
    assert LONG_NAME in str(ei.value) or "d" * 60 in str(ei.value)
    out = tmp_path / "u2.tar"
    with open(out, "wb") as f:
        stats = repo.produce_tar(bid, f, start=str(src / "sparse"), tar_format="ustar")
    assert stats["sparse"] == 0 and stats["content_bytes"] == 8 << 20    # holes written as zeros
    dest = tmp_path / "u"
    dest.mkdir()
    gnu(["xf", str(out), "-C", str(dest)])
    assert _sha(dest / str(src / "sparse").lstrip("/")) == _sha(src / "sparse")
    with open(tmp_path / "u3.tar", "wb") as f:     # ustar: raw non-UTF-8 name bytes are fine
        repo.produce_tar(bid, f, start=os.fsdecode(os.fsencode(src) + b"/caf\xe9"), tar_format="ustar")
    assert gnu(["tf", str(tmp_path / "u3.tar")])[0] == [str(src).lstrip("/") + "/caf\\351"]


def test_sockets_never_reach_the_tar_or_the_listing(tmp_path, repo):
    src = tmp_path / "s"
    src.mkdir()
    (src / "a").write_text("a")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(src / "sock"))
    try:
        res = repo.backup([src])
    finally:
        s.close()
    with open(tmp_path / "s.tar", "wb") as f:
        stats = repo.produce_tar(res.id, f, start=str(src))
    assert stats["entries"] == 2
    names = gnu(["tf", str(tmp_path / "s.tar")])[0]
    assert names == list(tf_lines(repo.list_backup(res.id, str(src)), utf8=True))
    assert not any(n.endswith("sock") for n in names) and names[-1].endswith("/a")


# -- damage -------------------------------------------------------------------
def test_corrupt_chunk_is_named_and_its_file_left_out_of_the_tar(tmp_path, repo):
    src = tmp_path / "c"
    src.mkdir()
    (src / "ok.txt").write_text("fine\n")
    write_random(src / "victim.bin", 1 << 20, seed=3)     # random: stored raw, a flip breaks the hash
    res = repo.backup([src])
    rp = repo.repository
    hit = 0
    for dirpath, _, files in os.walk(os.path.join(rp.path, "packs")):
        for fn in files:
            name = os.path.relpath(os.path.join(dirpath, fn), rp.path)
            for e in read_trailer(rp.storage, name):
                if e.kind == KIND_DATA and e.raw_length == 1 << 20:
                    with open(os.path.join(rp.path, name), "r+b") as f:
                        f.seek(e.offset + e.length // 2)
                        b = f.read(1)
                        f.seek(-1, 1)
                        f.write(bytes([b[0] ^ 0x40]))
                    hit += 1
    assert hit == 1
    sink = io.BytesIO()
    stats = repo.produce_tar(res.id, sink, start=str(src))
    assert len(stats["errors"]) == 1 and "victim.bin" in stats["errors"][0], stats["errors"]
    assert stats["errors"][0].endswith(": left out of the archive")
    sink.seek(0)
    with tarfile.open(fileobj=sink) as t:
        assert sorted(m.name.rsplit("/", 1)[-1] for m in t if m.isfile()) == ["ok.txt"]
    # the listing needs no content and still works
    assert any(line.endswith("/victim.bin") for line in tf_lines(repo.list_backup(res.id)))


# -- the commands -------------------------------------------------------------
@pytest.mark.parametrize("locale_vars", [{"LC_ALL": "C.UTF-8"}, {"LANG": "C"}, {}],
                         ids=["utf8", "C", "unset"])
def test_chunkrepo_ls_equals_chunkrepo_tar_piped_to_tar_tvf(world, locale_vars):
    """The requirement itself: `chunkrepo ls B` == `chunkrepo tar B | tar tvf -`, in
    the locale both inherit (unset: Python coerces its own locale to UTF-8, tar does not)."""
    env = {"PATH": ENV["PATH"], "TZ": "America/New_York", **locale_vars}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [sys.executable, "-m", "chunkrepo"]
    repo = str(world["repo"].path)

    def run(args, **kw):
        p = subprocess.run(cmd + args + ["--repo", repo, world["id"]], env=env, cwd=root,
                           capture_output=True, **kw)
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        return p.stdout

    archive = run(["tar"])
    p = subprocess.run(["tar", "tvf", "-"], input=archive, env=env, capture_output=True)
    assert p.returncode == 0 and p.stderr == b""
    assert run(["ls"]) == p.stdout
    p = subprocess.run(["tar", "tf", "-"], input=archive, env=env, capture_output=True)
    assert run(["ls", "--simple"]) == p.stdout
    assert (b"caf\xc3\xa9 \xc3\xbc" in p.stdout) == ("LC_ALL" in locale_vars)
