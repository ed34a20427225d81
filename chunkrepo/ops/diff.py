"""diff: what changed between two backups, or between a backup and a live tree.

Two backups are walked in lockstep, name by name (tar order: a directory,
then its entries sorted by name).  Two directories with the same record id
are identical all the way down and are never descended: an unchanged subtree
costs nothing however large it is (`stats.trees_read` counts the records read).

A change is one of (restic's markers):
  +  only on the right        -  only on the left       T  the type changed
  M  content: a regular file's data (its chunk list), a symlink's target or a
     device number
  U  metadata only: permission bits, owner (uid, gid, names), mtime, xattrs,
     link count (not of directories: theirs counts subdirectories)
ctime, inode and device are identity, not content: never compared.

Against a live tree the right side is read from the file system (lstat,
readlink, xattrs, as a backup reads them).  A regular file with another size
is M; one with the same size and mtime is taken as unchanged, unless
content=True, when every file is read, cut with the repository's chunker and
its chunk ids compared; one with the same size and another mtime is read and
compared that way (so a touched file is U, not M).  Against an fsspec URL the
right side is ops.diff_url's (diff_side is the entry point for any live side).
"""

import functools
import grp
import os
import pwd
import stat
from dataclasses import dataclass, field
from typing import Iterator, List, NamedTuple, Optional

from ..errors import NotFound
from ..model import Node, node_from_stat
from ..model.nodes import DIR, REG, SOCK, SYMLINK
from .backup.file_saver import FileChanged, FileSaver
from .backup.run import read_xattrs
from .traverse import find_node, split_path

ADDED, REMOVED, MODIFIED, METADATA, TYPE = "+", "-", "M", "U", "T"


class Change(NamedTuple):
    path: bytes            # absolute, b"/..."
    change: str            # one of + - M U T
    kind: str              # the entry's type (the right side's, the left's for '-')
    old_kind: str          # the left side's type ('' for '+')
    fields: tuple          # M and U: what differs ('content', 'target', 'mode', 'mtime', ...)
    size: int              # a regular file's size (the right side's, the left's for '-')


@dataclass
class DiffStats:
    added: int = 0
    removed: int = 0
    modified: int = 0
    metadata_only: int = 0
    type_changed: int = 0
    equal: int = 0              # entries on both sides with no difference; an identical subtree counts once
    bytes_added: int = 0        # sizes of files added, and new sizes of files modified
    bytes_removed: int = 0      # sizes of files removed, and old sizes of files modified
    trees_read: int = 0         # directory records read from the repository
    subtrees_skipped: int = 0   # directories with the same record id on both sides: not descended
    files_read: int = 0         # live files read to compare their content
    errors: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        # snapshooter's vocabulary
        d.update(different=self.modified + self.metadata_only + self.type_changed,
                 only_left=self.removed, only_right=self.added)
        return d


class _TreeSide:
    """A backup's directories: records read through the index (counted)."""

    def __init__(self, repo, stats: DiffStats):
        self.repo = repo
        self.stats = stats

    def children(self, node: Node, path: bytes) -> List[Node]:
        if node.subtree is None:
            return []
        self.stats.trees_read += 1
        return self.repo.read_tree(node.subtree).entries

    @staticmethod
    def same_content(old: Node, new: Node, path: bytes) -> bool:
        return (old.size, old.chunks, old.sparse or None) == (new.size, new.chunks, new.sparse or None)

    @staticmethod
    def meta_fields(a: Node, b: Node) -> list:
        return _meta_fields(a, b)


@functools.lru_cache(maxsize=None)
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@functools.lru_cache(maxsize=None)
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


class HashOnly:
    """A FileSaver session that stores nothing: the chunk ids are all we want."""

    def claim_chunk(self, cid: bytes) -> bool:
        return False

    def claim_chunks(self, cids: list) -> list:
        return [False] * len(cids)


class _LiveSide:
    """The file system as the backup saw it: a node per lstat, entries by os.scandir."""

    def __init__(self, repo, stats: DiffStats, content: bool):
        self.stats = stats
        self.content = content
        self.skip = os.fsencode(repo.path)       # a repository inside the tree is not in its backups
        self.all_xattrs = os.geteuid() == 0
        self.saver = FileSaver(HashOnly(), repo.config.chunker)

    def node(self, path: bytes, name: bytes) -> Optional[Node]:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        kw = {"xattrs": read_xattrs(path, self.all_xattrs)}
        if stat.S_ISLNK(st.st_mode):
            kw["target"] = os.readlink(path)
        return node_from_stat(name, st, _user(st.st_uid), _group(st.st_gid), **kw)

    def children(self, node: Node, path: bytes) -> List[Node]:
        base = path.rstrip(b"/") + b"/"
        try:
            with os.scandir(path) as it:
                names = sorted(e.name for e in it)
        except OSError as e:
            self.stats.errors.append(f"{os.fsdecode(path)}: cannot list directory: {e.strerror}")
            return []
        out = []
        for name in names:
            if base + name == self.skip:
                continue
            n = self.node(base + name, name)
            if n is not None and n.kind != SOCK:    # sockets are never backed up
                out.append(n)
        return out

    def same_content(self, old: Node, new: Node, path: bytes) -> bool:
        if old.size != new.size:
            return False
        if old.mtime_ns == new.mtime_ns and not self.content:
            return True
        try:
            _, chunks, sparse, _, _ = self.saver.read_file(path, os.lstat(path))
        except (OSError, FileChanged) as e:
            self.stats.errors.append(f"{os.fsdecode(path)}: cannot read to compare: {e}")
            return False
        self.stats.files_read += 1
        return chunks == old.chunks and (sparse or None) == (old.sparse or None)

    @staticmethod
    def meta_fields(a: Node, b: Node) -> list:
        return _meta_fields(a, b)


def _meta_fields(a: Node, b: Node) -> list:
    out = []
    if stat.S_IMODE(a.mode) != stat.S_IMODE(b.mode):
        out.append("mode")
    for name in ("uid", "gid", "user", "group"):
        if getattr(a, name) != getattr(b, name):
            out.append(name)
    if a.mtime_ns != b.mtime_ns:
        out.append("mtime")
    if (a.xattrs or None) != (b.xattrs or None):
        out.append("xattrs")
    if a.kind != DIR and a.nlink != b.nlink:
        out.append("links")
    return out


class _Diff:
    def __init__(self, left, right, stats: DiffStats):
        self.left = left
        self.right = right
        self.stats = stats

    def pair(self, path: bytes, a: Optional[Node], b: Optional[Node], top: bool = False) -> Iterator[Change]:
        """Changes at path (a on the left, b on the right) and below it."""
        st = self.stats
        if a is None or b is None:
            yield from self.one_side(path, a or b, self.right if a is None else self.left, a is None)
            return
        if a.kind != b.kind:
            st.type_changed += 1
            st.bytes_removed += a.size
            st.bytes_added += b.size
            yield Change(path, TYPE, b.kind, a.kind, (), b.size)
            if a.kind == DIR:
                yield from self.entries(path, a, self.left, added=False)
            if b.kind == DIR:
                yield from self.entries(path, b, self.right, added=True)
            return
        fields = [] if top else self.content_fields(path, a, b)
        content = bool(fields)
        if not top:
            fields += self.right.meta_fields(a, b)
        if content:
            st.modified += 1
            st.bytes_removed += a.size
            st.bytes_added += b.size
            yield Change(path, MODIFIED, b.kind, a.kind, tuple(fields), b.size)
        elif fields:
            st.metadata_only += 1
            yield Change(path, METADATA, b.kind, a.kind, tuple(fields), b.size)
        elif not top:
            st.equal += 1
        if a.kind == DIR:
            if a.subtree is not None and a.subtree == b.subtree:
                st.subtrees_skipped += 1
                return
            yield from self.dirs(path, a, b)

    def content_fields(self, path: bytes, a: Node, b: Node) -> list:
        if a.kind == REG:
            return [] if self.right.same_content(a, b, path) else ["content"]
        if a.kind == SYMLINK and a.target != b.target:
            return ["target"]
        if a.rdev != b.rdev:
            return ["rdev"]
        return []

    def dirs(self, path: bytes, a: Node, b: Node) -> Iterator[Change]:
        left = {n.name: n for n in self.left.children(a, path)}
        right = {n.name: n for n in self.right.children(b, path)}
        base = path.rstrip(b"/") + b"/"
        for name in sorted(left.keys() | right.keys()):
            yield from self.pair(base + name, left.get(name), right.get(name))

    def one_side(self, path: bytes, node: Node, side, added: bool) -> Iterator[Change]:
        if added:
            self.stats.added += 1
            self.stats.bytes_added += node.size
            yield Change(path, ADDED, node.kind, "", (), node.size)
        else:
            self.stats.removed += 1
            self.stats.bytes_removed += node.size
            yield Change(path, REMOVED, node.kind, node.kind, (), node.size)
        if node.kind == DIR:
            yield from self.entries(path, node, side, added)

    def entries(self, path: bytes, node: Node, side, added: bool) -> Iterator[Change]:
        base = path.rstrip(b"/") + b"/"
        for child in side.children(node, path):
            yield from self.one_side(base + child.name, child, side, added)


class Diff:
    """The changes, in tree order, as an iterator; stats are complete once it is exhausted."""

    def __init__(self, changes: Iterator[Change], stats: DiffStats):
        self._changes = changes
        self.stats = stats

    def __iter__(self) -> Iterator[Change]:
        return self._changes


def _node_at(repo, root: bytes, path: bytes) -> Optional[Node]:
    try:
        return find_node(repo, root, path)
    except NotFound:
        return None


def _start(path) -> bytes:
    parts = split_path(path or "/")
    return b"/" + b"/".join(parts)


def diff_backups(repo, left, right, path=None) -> Diff:
    """Changes from backup record left to backup record right (below path, if given)."""
    start = _start(path)
    a = _node_at(repo, bytes.fromhex(left.root), start)
    b = _node_at(repo, bytes.fromhex(right.root), start)
    if a is None and b is None:
        raise NotFound(f"{os.fsdecode(start)}: in neither backup")
    stats = DiffStats()
    side = _TreeSide(repo, stats)
    return Diff(_Diff(side, side, stats).pair(start, a, b, top=start == b"/"), stats)


def diff_live(repo, left, live_path, content: bool = False) -> Diff:
    """Changes from backup record left to the live file system at live_path (the same
    absolute path in the backup)."""
    start = os.path.normpath(os.path.abspath(os.fsencode(live_path)))
    stats = DiffStats()
    live = _LiveSide(repo, stats, content)
    return diff_side(repo, left, start, live, live.node(start, os.path.basename(start)), stats,
                     f"{os.fsdecode(start)}: neither in backup {left.id} nor on disk")


def diff_side(repo, left, start: bytes, right, b: Optional[Node], stats: DiffStats, neither: str) -> Diff:
    """Changes from the node at start in backup record left to b (None: absent), whose
    entries come from right: a live side with children(node, path), same_content(old,
    new, path) and meta_fields(a, b).  neither: the NotFound message when both are absent."""
    a = _node_at(repo, bytes.fromhex(left.root), start)
    if a is None and b is None:
        raise NotFound(neither)
    return Diff(_Diff(_TreeSide(repo, stats), right, stats).pair(start, a, b, top=start == b"/"), stats)


__all__ = ["ADDED", "REMOVED", "MODIFIED", "METADATA", "TYPE", "Change", "Diff", "DiffStats", "HashOnly",
           "diff_backups", "diff_live", "diff_side"]
