"""tar tvf / tar tf style listings of a backup.

tvf_lines(entries) yields, line for line, what GNU tar 1.34 prints for
`chunkrepo tar BACKUP | tar tvf -`, and tf_lines what `tar tf -` prints.
What had to be reproduced (src/list.c simple_print_header and friends):

* mode string: type letter ('h' for a hard link member), rwx with s/S, t/T;
* owner: "user/group", numeric id when the name is empty;
* the "user/group size" column: GNU tar keeps a width (initially 19) that only
  grows: pad = len(user) + 1 + len(group) + 1 + len(size); the size is
  right-aligned so that the whole field is at least that width (bytes count,
  as C's strlen does);
* size: 0 for directories, symlinks, fifos and hard link members;
  "major,minor" for devices; the real size for sparse files;
* date: localtime "YYYY-MM-DD HH:MM" (TZ honoured, time.tzset() after changing
  it); for a negative time with a fraction GNU tar rounds toward zero; the
  date column also only grows (left aligned);
* names quoted by quotearg's escape style in tar's locale: backslash doubled,
  \\a \\b \\t \\n \\v \\f \\r, other unprintable bytes as 3-digit octal; in a
  UTF-8 locale valid printable characters pass (glibc's unprintable set is
  exactly Unicode categories Cc, Cn, Zl, Zp), in any other locale every
  non-ASCII byte is escaped;
* directories end with '/', symlinks " -> target", hard links " link to X";
* sockets are left out, as write_tar leaves them out.
"""

import datetime
import locale
import os
import re
import time
import unicodedata
from typing import Iterable, Iterator, Optional

from ..errors import NotFound
from ..model.nodes import DIR
from .traverse import Entry, split_path


_PLAIN = re.compile(rb"[^\x20-\x5b\x5d-\x7e]")      # bytes that need a look
_LETTER = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r", 92: "\\\\"}
_UNPRINTABLE = frozenset(("Cc", "Cn", "Zl", "Zp"))
_TYPE_LETTER = {0o100000: "-", 0o040000: "d", 0o120000: "l", 0o020000: "c", 0o060000: "b",
                0o010000: "p"}
_LISTED = frozenset(_TYPE_LETTER)
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


def _octal(data: bytes) -> str:
    return "".join("\\%03o" % b for b in data)


def quote_name(name: bytes, utf8: bool = True) -> str:
    """A name as GNU tar prints it (quotearg, escape style)."""
    if _PLAIN.search(name) is None:
        return name.decode("ascii")
    out = []
    for ch in name.decode("utf-8" if utf8 else "ascii", "surrogateescape"):
        c = ord(ch)
        if 0x20 <= c < 0x7f:
            out.append("\\\\" if c == 92 else ch)
        elif c < 0x80 or c == 0x7f:
            out.append(_LETTER.get(c) or "\\%03o" % c)
        elif 0xdc80 <= c <= 0xdcff:                  # an undecodable byte
            out.append("\\%03o" % (c - 0xdc00))
        elif unicodedata.category(ch) in _UNPRINTABLE:
            out.append(_octal(ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def _initial_env() -> dict:
    """The environment this process was started with (Python's C-locale coercion
    may have set LC_CTYPE since; tar in the same shell does not see that)."""
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
        env = {}
        for item in raw.split(b"\0"):
            k, sep, v = item.partition(b"=")
            if sep and k in (b"LC_ALL", b"LC_CTYPE", b"LANG"):
                env[k.decode()] = v.decode("utf-8", "surrogateescape")
        return env
    except OSError:
        return dict(os.environ)


def tar_locale_is_utf8(env: Optional[dict] = None) -> bool:
    """Whether GNU tar started with env (default: our own start environment) runs
    with a UTF-8 LC_CTYPE: setlocale(LC_ALL, "") picks LC_ALL, LC_CTYPE, LANG,
    and falls back to C (ASCII) for a locale that is not installed."""
    if env is None:
        env = _initial_env()
    name = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or "C"
    if name in ("C", "POSIX"):
        return False
    saved = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, name)
        codeset = locale.nl_langinfo(locale.CODESET)
    except (locale.Error, ValueError):
        return False
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)
    return codeset.replace("-", "").upper() == "UTF8"


def _mode_string(mode: int, hardlink: bool) -> str:
    t = "h" if hardlink else _TYPE_LETTER.get(mode & 0o170000, "?")
    s = [t]
    for shift, special, on, off in ((6, 0o4000, "s", "S"), (3, 0o2000, "s", "S"), (0, 0o1000, "t", "T")):
        bits = mode >> shift
        s.append("r" if bits & 4 else "-")
        s.append("w" if bits & 2 else "-")
        if mode & special:
            s.append(on if bits & 1 else off)
        else:
            s.append("x" if bits & 1 else "-")
    return "".join(s)


class _Dates:
    """localtime "YYYY-MM-DD HH:MM" of a time in ns, cached per UTC minute.

    A miss is computed with integer arithmetic from the UTC offset of its UTC day
    (one localtime() pair per day), which is exact when the offset is the same at
    both ends of the day and localtime agrees with the arithmetic (no leap-second
    "right/" zone); otherwise that second goes to localtime/strftime itself.
    """

    def __init__(self):
        self.minutes = {}
        self.seconds = {}
        self.offsets = {}           # UTC day -> its UTC offset in s, None: ask localtime
        self.days = {}              # local day -> "YYYY-MM-DD"

    def _offset(self, day: int):
        try:
            a = time.localtime(day * 86400)
            b = time.localtime(day * 86400 + 86399)
            off = a.tm_gmtoff
            if off is None or off != b.tm_gmtoff or \
                    (a.tm_hour * 3600 + a.tm_min * 60 + a.tm_sec) != off % 86400:
                off = None
        except (OverflowError, OSError, ValueError):
            off = None
        self.offsets[day] = off
        return off

    def __call__(self, ns: int) -> str:
        sec, frac = divmod(ns, 1_000_000_000)
        if sec < 0 and frac:
            sec += 1            # tartime() rounds a negative time toward zero
        m = sec // 60
        s = self.minutes.get(m)
        if s is not None:
            return s
        day = sec // 86400
        off = self.offsets[day] if day in self.offsets else self._offset(day)
        if off is not None and off % 60 == 0:
            lday, rem = divmod(m * 60 + off, 86400)
            date = self.days.get(lday)
            if date is None:
                try:
                    date = datetime.date.fromordinal(_EPOCH_ORDINAL + lday).isoformat()
                except (OverflowError, ValueError):
                    date = None
                if date is None or date[0] == "0":      # strftime does not pad years < 1000
                    self.offsets[day] = None
                    return self(ns)
                self.days[lday] = date
            h, mi = divmod(rem // 60, 60)
            s = self.minutes[m] = f"{date} {h:02d}:{mi:02d}"
            return s
        s = self.seconds.get(sec)
        if s is not None:
            return s
        try:
            s = time.strftime("%Y-%m-%d %H:%M", time.localtime(sec))
        except (OverflowError, OSError, ValueError):
            s = str(sec).rjust(6)   # tar prints the number when localtime fails
        self.seconds[sec] = s
        return s


def tvf_lines(entries, utf8: Optional[bool] = None) -> Iterator[str]:
    """`tar tvf` lines for the Entry iterator of traverse.walk.

    utf8: quote names as tar does in a UTF-8 locale (True) or the C locale
    (False); None asks the environment as tar would.
    """
    if utf8 is None:
        utf8 = tar_locale_is_utf8()
    heads: dict = {}            # (mode, hardlink, owner) -> (mode string + owner, its width)
    dates = _Dates()
    plain = _PLAIN.search
    ugswidth = 19
    datewidth = 16
    listed = _LISTED
    for path, n, hardlink_to in entries:
        _, mode, uid, gid, user, group, size, mtime_ns = n[:8]
        ftype = mode & 0o170000
        if ftype not in listed:
            continue
        hard = hardlink_to is not None
        key = (mode, hard, user, uid, group, gid)
        head = heads.get(key)
        if head is None:
            o = f"{user or uid}/{group or gid}"
            head = heads[key] = (f"{_mode_string(mode, hard)} {o} ", len(o.encode("utf-8", "surrogateescape")))
        if ftype == 0o100000 and not hard:
            size = str(size)
        elif ftype == 0o020000 or ftype == 0o060000:
            size = f"{os.major(n.rdev)},{os.minor(n.rdev)}"
        else:
            size = "0"
        pad = head[1] + 1 + len(size)
        if pad > ugswidth:
            ugswidth = pad
        date = dates(mtime_ns)
        if len(date) != datewidth:
            if len(date) > datewidth:
                datewidth = len(date)
            else:
                date = date.ljust(datewidth)
        name = path.decode("ascii") if plain(path) is None else quote_name(path, utf8)
        if hard:
            tail = " link to " + (hardlink_to.decode("ascii") if plain(hardlink_to) is None
                                  else quote_name(hardlink_to, utf8))
        elif ftype == 0o040000:
            tail = "/"
        elif ftype == 0o120000:
            t = n.target
            tail = " -> " + (t.decode("ascii") if plain(t) is None else quote_name(t, utf8))
        else:
            tail = ""
        yield f"{head[0]}{size.rjust(ugswidth - head[1] - 1)} {date} {name}{tail}"


def directory_checked(entries: Iterable[Entry], path) -> Iterator[Entry]:
    """The entries of a listing that starts at path, whose first one is path itself
    (traverse.walk): a path ending in '/' must be a directory, as a file system's path
    lookup wants (GNU tar lists a file given as 'file/'), or NotFound is raised
    before any entry is yielded."""
    it = iter(entries)
    p = os.fsencode(path)
    if p.endswith(b"/") and split_path(p):
        first = next(it, None)
        if first is not None and first.node.kind != DIR:
            raise NotFound(f"{os.fsdecode(p)}: not a directory in the backup")
        if first is not None:
            yield first
    yield from it


def tf_lines(entries, utf8: Optional[bool] = None) -> Iterator[str]:
    """`tar tf` lines (names only, directories with a trailing '/')."""
    if utf8 is None:
        utf8 = tar_locale_is_utf8()
    plain = _PLAIN.search
    listed = _LISTED
    for e in entries:
        ftype = e.node.mode & 0o170000
        if ftype not in listed:
            continue
        p = e.path
        name = p.decode("ascii") if plain(p) is None else quote_name(p, utf8)
        yield name + "/" if ftype == 0o040000 and e.hardlink_to is None else name
