"""diff against a live fsspec URL (s3://bucket/data, memory://..., file:///...).

The right side of ops.diff's walk is the filesystem, listed exactly as a URL
backup lists it (ops.backup.fsspec_source.list_dir: one fresh ls per
directory, entries as the backup would record them), so an unchanged URL
diffs clean against its own backup.

Where the URL is in the backup
    A URL backup's tree is its URL: in a backup of ``s3://b/data``,
    ``s3://b/data/x`` is ``/x``.  So when backup A is a backup of the URL or
    of a directory above it, the URL is compared with that path in A; with any
    other backup (a local one, or one of another URL: a restore target, say)
    with A's root.  SUBPATH goes below both.

What differs
    An object of another size is M.  With an ETag on both sides (an opaque
    token) the ETags decide; otherwise equal mtimes mean equal content (as
    for a local tree), and an object with another mtime is read, cut with the
    repository's chunker and its chunk ids compared.  content=True reads
    every object that way.  Of the metadata only an object's mtime means
    anything here (URL backups record fixed modes and no owners), so U is an
    object whose mtime changed and whose content did not.  An object against
    a prefix of the same name is T.  What a backup leaves out (an object
    shadowed by a prefix of its name, a symlink of a file:// tree) is not
    compared and is reported in stats.errors, as are directories that cannot
    be listed below the top one; the top one must be listable.
"""

import os
import posixpath
from typing import List, Optional

from ..errors import ChunkrepoError
from ..model import Node
from ..model.nodes import REG
from .backup.file_saver import FileSaver
from .backup.fsspec_source import LEFT_OUT, list_dir, listed_node, read_chunks, repo_below
from .diff import Diff, DiffStats, HashOnly, diff_side
from .fsspec_url import fs_errors, is_url, one_line, open_url

_ENC = "utf-8", "surrogateescape"


class _UrlSide:
    """The objects below key (the path `start` of the backup) on filesystem fs."""

    def __init__(self, repo, stats: DiffStats, content: bool, fs, key: str, start: bytes, shown: str,
                 options: Optional[dict]):
        self.stats = stats
        self.content = content
        self.fs = fs
        self.key = key
        self.start = start
        self.shown = shown              # the URL of key, for messages
        self.saver = FileSaver(HashOnly(), repo.config.chunker)
        self.skip = b""                 # a repository inside the URL is not in its backups
        below = repo_below(repo, shown, options)
        if below != b"\0":
            self.skip = start.rstrip(b"/") + below

    def _key(self, path: bytes) -> str:
        if path == self.start:
            return self.key
        return self.key.rstrip("/") + path[len(self.start.rstrip(b"/")):].decode(*_ENC)

    def _url(self, key: str) -> str:
        return self.shown + key[len(self.key.rstrip("/")):]

    def children(self, node: Node, path: bytes) -> List[Node]:
        key = self._key(path)
        try:
            listing = list_dir(self.fs, key)
        except Exception as e:          # the library's own exceptions included
            if path == self.start:      # nothing to compare with: not "everything removed"
                raise ChunkrepoError(f"{self.shown}: cannot list: {one_line(e)}") from None
            self.stats.errors.append(f"{self._url(key)}: cannot list directory: {one_line(e)}")
            return []
        base = path.rstrip(b"/") + b"/"
        out = []
        for name, ckey, info in listing:
            child = None if info.get("left_out") else listed_node(name, info)
            if child is None:
                why = LEFT_OUT[info["left_out"]] if info.get("left_out") else \
                    f"not a regular file or directory ({info.get('type')})"
                self.stats.errors.append(f"{self._url(ckey)}: {why}: not compared")
            elif base + name != self.skip:
                out.append(child)
        return out

    def same_content(self, old: Node, new: Node, path: bytes) -> bool:
        if old.size != new.size:
            return False
        if not self.content:
            if old.etag is not None and new.etag is not None:
                return old.etag == new.etag
            if old.mtime_ns == new.mtime_ns:
                return True
        key = self._key(path)
        try:
            chunks, nread = read_chunks(self.fs, key, self.saver, new.size)
        except Exception as e:
            self.stats.errors.append(f"{self._url(key)}: cannot read to compare: {one_line(e)}")
            return False
        self.stats.files_read += 1
        if nread != new.size:
            self.stats.errors.append(f"{self._url(key)}: changed while read to compare")
            return False
        return chunks == old.chunks and not old.sparse

    @staticmethod
    def meta_fields(a: Node, b: Node) -> list:
        return ["mtime"] if a.kind == REG and a.mtime_ns != b.mtime_ns else []


def _place(left, shown: str) -> str:
    """Where the URL's objects are in backup record left: '/x' when left is a backup of
    the URL minus its '/x'; '' (the root) when of the URL itself or of anything else."""
    if len(left.paths) == 1 and is_url(left.paths[0]):
        base = left.paths[0]
        if shown == base or shown.startswith(base.rstrip("/") + "/"):
            return shown[len(base.rstrip("/")):]
    return ""


def diff_url(repo, left, url: str, path=None, content: bool = False, options: Optional[dict] = None) -> Diff:
    """Changes from backup record left to the live objects at the fsspec URL (and below
    path inside it, if given); options: the filesystem's (endpoint_url=...)."""
    fs, root, shown = open_url(url, options or {})
    with fs_errors(shown):
        fs.invalidate_cache(root)
        info = fs.info(root)            # the URL itself must exist: a typo is not "all removed"
    sub = posixpath.normpath("/" + os.fsdecode(path or "").strip("/")).rstrip("/")     # '' or '/x/y'
    start = ((_place(left, shown) + sub) or "/").encode(*_ENC)
    key = root.rstrip("/") + sub if sub else root
    where = shown + sub
    if sub:                             # below it, absent means removed
        with fs_errors(where):
            try:
                fs.invalidate_cache(key)
                info = fs.info(key)
            except FileNotFoundError:
                info = None
    stats = DiffStats()
    b = None
    if info is not None:
        b = listed_node(os.path.basename(start), info)
        if b is None:
            raise ChunkrepoError(f"{where}: not a regular file or directory ({info.get('type')})")
    side = _UrlSide(repo, stats, content, fs, key, start, where, options)
    return diff_side(repo, left, start, side, b, stats,
                     f"{where}: neither in backup {left.id} (as {os.fsdecode(start)}) nor at the URL")


__all__ = ["diff_url"]
