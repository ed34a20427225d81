"""tvf_lines/tf_lines against GNU tar's own listing of equivalent archives.

The archives here are built with tarfile from synthetic nodes (no repository),
so that values a file system rarely holds (long owner names, big device
numbers, year-10000 dates, every byte in a name) can be checked against the
real `tar tvf`.  The full round trip through a backup is in
tests/integration/test_tar_listing.py.
"""

import io
import os
import shutil
import stat
import subprocess
import tarfile
import time

import pytest

from chunkrepo.model import Node
from chunkrepo.ops.listing import quote_name, tar_locale_is_utf8, tf_lines, tvf_lines
from chunkrepo.ops.tarout import _pax_time
from chunkrepo.ops.traverse import Entry

pytestmark = pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is needed")

UTF8_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "TZ": "UTC"}
C_ENV = dict(UTF8_ENV, LC_ALL="C")


def node(name: bytes, mode: int, size=0, uid=0, gid=0, user="root", group="root",
         mtime_ns=1_700_000_000 * 10**9, rdev=0, target=b""):
    return Node(name, mode, uid, gid, user, group, size, mtime_ns, mtime_ns, 1, 1, 1, rdev,
                target, None, b"", None, None)


def to_tar(entries, path):
    """An archive holding what write_tar would write for these entries (pax)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for e in entries:
            n = e.node
            ti = tarfile.TarInfo(e.path.decode("utf-8", "surrogateescape"))
            ti.mode = n.mode & 0o7777
            ti.uid, ti.gid, ti.uname, ti.gname = n.uid, n.gid, n.user, n.group
            ti.mtime = n.mtime_ns // 10**9
            if n.mtime_ns % 10**9:
                ti.pax_headers = {"mtime": _pax_time(n.mtime_ns)}
            data = None
            if e.hardlink_to is not None:
                ti.type = tarfile.LNKTYPE
                ti.linkname = e.hardlink_to.decode("utf-8", "surrogateescape")
            elif stat.S_ISREG(n.mode):
                ti.size = n.size
                data = io.BytesIO(bytes(n.size))
            elif stat.S_ISDIR(n.mode):
                ti.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(n.mode):
                ti.type = tarfile.SYMTYPE
                ti.linkname = n.target.decode("utf-8", "surrogateescape")
            elif stat.S_ISCHR(n.mode) or stat.S_ISBLK(n.mode):
                ti.type = tarfile.CHRTYPE if stat.S_ISCHR(n.mode) else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = os.major(n.rdev), os.minor(n.rdev)
            elif stat.S_ISFIFO(n.mode):
                ti.type = tarfile.FIFOTYPE
            else:
                continue
            tf.addfile(ti, data)


def gnu_list(path, flags="tvf", env=UTF8_ENV):
    out = subprocess.run(["tar", flags, str(path)], env=env, capture_output=True, check=True).stdout
    return out.decode("utf-8", "surrogateescape").splitlines()


def E(path: bytes, n, link=None):
    return Entry(path, n, link)


def test_column_widths_grow_like_gnu_tar(tmp_path):
    """GNU tar's owner/size and date columns only widen: reproduce the stairs."""
    reg = stat.S_IFREG | 0o644
    entries = [
        E(b"a", node(b"a", reg, 5)),
        E(b"b", node(b"b", reg, 3_000_000)),
        E(b"c", node(b"c", reg, 7, user="averyveryverylongusername", group="staff")),
        E(b"d", node(b"d", reg, 1)),
        E(b"e", node(b"e", stat.S_IFCHR | 0o600, rdev=os.makedev(4095, 1048575))),
        E(b"f", node(b"f", reg, 2, uid=12345, gid=54321, user="", group="")),
        E(b"g", node(b"g", reg, 2, user="", group="wheel", uid=7)),
        E(b"h", node(b"h", reg, 2, user="\u00e9l\u00e8ve", group="root")),
        E(b"y", node(b"y", reg, 3, mtime_ns=253402300800 * 10**9)),       # year 10000
        E(b"z", node(b"z", reg, 4)),
        E(b"z2", node(b"z2", stat.S_IFDIR | 0o755, mtime_ns=-60_500_000_000)),
        E(b"z3", node(b"z3", reg, 0), link=b"a"),
        E(b"z4", node(b"z4", stat.S_IFLNK | 0o777, target=b"../t a\\rget")),
        E(b"z5", node(b"z5", stat.S_IFIFO | 0o644)),
        E(b"z6", node(b"z6", stat.S_IFBLK | 0o660, rdev=os.makedev(8, 0))),
    ]
    to_tar(entries, tmp_path / "w.tar")
    expected = gnu_list(tmp_path / "w.tar")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        got = list(tvf_lines(entries, utf8=True))
    finally:
        del os.environ["TZ"]
        time.tzset()
    assert got == expected
    # the columns really did move (else this test would check little)
    assert got[0] == "-rw-r--r-- root/root         5 2023-11-14 22:13 a"
    assert got[3] == "-rw-r--r-- root/root                       1 2023-11-14 22:13 d"
    assert got[8].endswith(" 10000-01-01 00:00 y")
    assert got[9].endswith(" 2023-11-14 22:13  z")       # the date column widened


def test_modes_cover_special_bits(tmp_path):
    entries = []
    for i, perm in enumerate(range(0, 0o10000, 0o111 + 0o1000 // 7)):
        for kind in (stat.S_IFREG, stat.S_IFDIR):
            p = b"m%05d%s" % (i, b"d" if kind == stat.S_IFDIR else b"f")
            entries.append(E(p, node(p, kind | perm)))
    entries += [E(b"s%04o" % p, node(b"s", stat.S_IFREG | p))
                for p in (0o4000, 0o4100, 0o2000, 0o2010, 0o1000, 0o1001, 0o7777, 0o7000)]
    to_tar(entries, tmp_path / "m.tar")
    assert list(tvf_lines(entries, utf8=True)) == gnu_list(tmp_path / "m.tar")


def _byte_names():
    names = [bytes(range(1, 47)), bytes(range(48, 128)),
             bytes(range(128, 192)), bytes(range(192, 256)),
             b"caf\xe9", b"\xe2\x82A\xc0\x80\xed\xa0\x80\xf4\x90\x80\x80",       # broken UTF-8
             "caf\u00e9 \u00fc \u20ac \U0001f600".encode(),
             # unprintable in glibc: C1 controls, unassigned, line/paragraph separators
             "\u0085\u0378\u2028\u2029\u00a0\u00ad\u200b\ue000".encode(),
             b"back\\slash space\ttab\nnewline \"'?*"]
    return names


@pytest.mark.parametrize("utf8,env", [(True, UTF8_ENV), (False, C_ENV)])
def test_names_are_quoted_like_gnu_tar(tmp_path, utf8, env):
    entries = []
    for i, n in enumerate(_byte_names()):
        p = b"d%d/" % i + n
        entries.append(E(p, node(n, stat.S_IFREG | 0o644)))
        entries.append(E(p + b"L", node(n, stat.S_IFLNK | 0o777, target=n)))
    entries.append(E(b"x\xff", node(b"x", stat.S_IFREG | 0o644), link=entries[0].path))
    to_tar(entries, tmp_path / "q.tar")
    assert list(tvf_lines(entries, utf8=utf8)) == gnu_list(tmp_path / "q.tar", "tvf", env)
    assert list(tf_lines(entries, utf8=utf8)) == gnu_list(tmp_path / "q.tar", "tf", env)


def test_quote_name_basics():
    assert quote_name(b"plain/name.txt") == "plain/name.txt"
    assert quote_name(b"a\\b") == "a\\\\b"
    assert quote_name(b"caf\xe9") == "caf\\351"
    assert quote_name("caf\u00e9".encode()) == "caf\u00e9"
    assert quote_name("caf\u00e9".encode(), utf8=False) == "caf\\303\\251"
    assert quote_name(b"\x1b[0m") == "\\033[0m"


def test_locale_detection():
    assert tar_locale_is_utf8({"LANG": "C.UTF-8"}) is True
    assert tar_locale_is_utf8({"LC_ALL": "C.UTF-8", "LANG": "C"}) is True
    assert tar_locale_is_utf8({"LC_ALL": "C", "LANG": "C.UTF-8"}) is False
    assert tar_locale_is_utf8({"LC_CTYPE": "POSIX", "LANG": "C.UTF-8"}) is False
    assert tar_locale_is_utf8({}) is False
    assert tar_locale_is_utf8({"LANG": "xx_NOWHERE.UTF-8"}) is False   # not installed: C


def test_speed_of_a_large_listing():
    """~60k entries in well under 0.3 s (the budget is checked loosely here)."""
    entries = []
    for d in range(600):
        dp = b"srv/data/dir%04d" % d
        entries.append(E(dp, node(dp, stat.S_IFDIR | 0o755, mtime_ns=(1_600_000_000 + d * 97) * 10**9)))
        for i in range(99):
            p = dp + b"/file-%05d.dat" % i
            entries.append(E(p, node(p, stat.S_IFREG | 0o644, size=i * 1013,
                                     uid=1000 + i % 3, user=("alice", "bob", "")[i % 3],
                                     mtime_ns=(1_600_000_000 + d * 97 + i * 61) * 10**9 + i)))
    assert len(entries) == 60_000
    best = min(_timed(entries) for _ in range(3))
    print(f"tvf_lines: {len(entries)} entries in {best * 1000:.0f} ms")
    assert best < 0.6


def _timed(entries):
    t = time.perf_counter()
    for _ in tvf_lines(entries, utf8=True):
        pass
    return time.perf_counter() - t
