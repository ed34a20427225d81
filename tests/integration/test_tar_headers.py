"""The fast pax header builder writes exactly what tarfile writes."""

import random
import tarfile

import pytest

from chunkrepo.ops.tarout import _TarInfo, _pax_header_fast

NAMES = ["a", "dir/", "x" * 100, "y" * 101, "d/" * 60 + "f", "caf\u00e9", "bad\udcff name",
         "sp ace/with=eq%", "\u65e5\u672c/\u8a9e.txt"]
TYPES = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
         tarfile.BLKTYPE, tarfile.FIFOTYPE]


def reference(name, mode, uid, gid, size, mtime, typeflag, link, uname, gname, dmaj, dmin, pax):
    ti = _TarInfo(name)
    ti.mode, ti.uid, ti.gid, ti.size, ti.mtime, ti.type = mode & 0o7777, uid, gid, size, mtime, typeflag
    ti.linkname, ti.uname, ti.gname, ti.devmajor, ti.devminor = link, uname, gname, dmaj, dmin
    ti.pax_headers = dict(pax)
    try:
        return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    except ValueError:      # a device number too big for any tar header
        return None


@pytest.mark.parametrize("seed", range(40))
def test_fast_pax_header_equals_tarfile(seed):
    rnd = random.Random(seed)
    for _ in range(50):
        args = (rnd.choice(NAMES), rnd.choice([0o100644, 0o40755, 0o120777, 0o104755, 0o7777]),
                rnd.choice([0, 1000, 2**21 - 1, 2**21, 2**40]), rnd.choice([0, 50, 2**21 + 5]),
                rnd.choice([0, 1, 511, 10**9, 8**11 - 1, 8**11, 2**40]),
                rnd.choice([0, 1_700_000_000, 8**11 - 1, 8**11]), rnd.choice(TYPES),
                rnd.choice(["", "target", "t" * 100, "t" * 150, "\u00fcber"]),
                rnd.choice(["", "root", "u" * 32, "u" * 33, "j\u00fcrgen"]),
                rnd.choice(["", "wheel", "g" * 40]), rnd.choice([0, 8, 2**21 + 1]), rnd.choice([0, 1, 255]),
                rnd.choice([{}, {"mtime": "1700000000.5"}, {"SCHILY.xattr.user.k": "v\udcff"}]))
        want = reference(*args)
        name = args[0] + "/" if args[6] == tarfile.DIRTYPE and not args[0].endswith("/") else args[0]
        got = _pax_header_fast(name, *args[1:-1], dict(args[-1]))   # the writer adds a directory's '/'

        if got is not None:          # None: it leaves the entry to tarfile
            assert got == want, args
        elif want is not None:
            uid, gid, size, mtime = args[2:6]
            assert max(uid, gid) >= 8**7 or size >= 8**11 or mtime >= 8**11 or max(args[10:12]) >= 8**7
