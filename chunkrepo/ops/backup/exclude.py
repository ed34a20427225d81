"""--exclude patterns: which paths of a backup's walk are left out.

The rules (GNU tar's defaults for --exclude, with restic's '**'):

* a pattern starting with '/' is anchored: it must match the whole path in the
  backup (/home/me/.cache);
* any other pattern matches the path's last component (the name), or any run of
  trailing components: 'a/b' matches /x/a/b and /a/b, not /x/ab;
* '*' matches any characters, '/' included (as tar's); '?' one character;
  '[...]' one of a set ('[!...]' none of it); '**/' matches zero or more whole
  directories, so 'a/**/f' also matches a/f, and a final '/**' matches the
  directory itself too;
* a trailing '/' is dropped ('cache/' is 'cache');
* a directory that matches is left out with everything below it (the walk does
  not enter it), so a pattern also covers what is below what it matches.

The walk asks for every entry, so the patterns are compiled once: plain names
go into a set (no decoding), the rest into one regular expression matched
against the decoded path.
"""

import os
import re
from typing import Iterable

_WILD = frozenset("*?[")


def _translate(pat: str) -> str:
    """The regular expression of one glob pattern (without anchors)."""
    out, i, n = [], 0, len(pat)
    while i < n:
        c = pat[i]
        if pat.startswith("**/", i) and (i == 0 or pat[i - 1] == "/"):
            out.append("(?:.*/)?")               # zero or more whole directories
            i += 3
        elif pat.startswith("/**", i) and i + 3 == n:
            out.append("(?:/.*)?")               # the directory itself, or anything below
            i += 3
        elif c == "*":
            while i < n and pat[i] == "*":
                i += 1
            out.append(".*")
        elif c == "?":
            out.append(".")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pat[j] == "!":
                j += 1
            if j < n and pat[j] == "]":
                j += 1
            j = pat.find("]", j)
            if j < 0:                              # no closing bracket: a literal '['
                out.append(re.escape(c))
                i += 1
                continue
            body = pat[i + 1:j]
            neg = body.startswith("!")
            body = body[1:] if neg else body
            out.append("[" + ("^" if neg else "") + body.replace("\\", "\\\\").replace("^", "\\^")
                       .replace("[", "\\[") + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


class Excludes:
    """The compiled patterns: matches(path, name) for a path in the backup ("/x/y") and its name."""

    def __init__(self, patterns: Iterable[str]):
        names, anchored, floating = set(), [], []
        for pat in patterns:
            pat = pat.rstrip("/") or "/"
            if pat.startswith("/"):
                anchored.append(_translate(pat))
            elif "/" not in pat and not _WILD.intersection(pat):
                names.add(os.fsencode(pat))
            else:
                floating.append(_translate(pat))
        self._names = frozenset(names)
        alts = [f"(?:{'|'.join(anchored)})"] if anchored else []
        if floating:         # a path in the backup starts with '/': '.*/' finds each component start
            alts.append(f".*/(?:{'|'.join(floating)})")
        self._match = re.compile(f"(?s:{'|'.join(alts)})\\Z").match if alts else None

    def matches(self, path: bytes, name: bytes) -> bool:
        if name in self._names:
            return True
        return self._match is not None and self._match(os.fsdecode(path)) is not None
