"""Walking a stored backup: the one traversal that ls, tar and restore share.

Yields entries in tar order (a directory, then its children sorted by name,
depth first) with the path relative to '/', and for the second and later
names of a hard-linked regular file or symlink the path of the first one met
(GNU tar keeps those two kinds of hard links; a FIFO or device node comes
back as a separate node, as from GNU tar).

A reader that must see the whole backup however long it runs passes the
read view it opened at its start (ops.read_snapshot); without one, the walk
opens its own when it starts.
"""

import contextlib
import os
from typing import Iterator, NamedTuple, Optional

from ..errors import NotFound
from ..model import Node
from ..model.nodes import DIR, REG, SYMLINK


class Entry(NamedTuple):
    path: bytes                 # relative to '/', no leading slash; b"" is the root
    node: Node
    hardlink_to: Optional[bytes]


def split_path(path) -> list:
    p = os.fsencode(path) if not isinstance(path, bytes) else path
    return [c for c in p.split(b"/") if c and c != b"."]


def _view(repo, view):
    """view itself, or a read view of the index opened for the block."""
    return contextlib.nullcontext(view) if view is not None else repo.index.read()


def find_node(repo, root_tid: bytes, path, view=None) -> Node:
    """The node at path inside a backup's tree; NotFound if absent."""
    parts = split_path(path)
    node = Node(b"", 0o40755, 0, 0, "", "", 0, 0, 0, 0, 0, 0, 0, b"", None, b"", root_tid, None)
    with _view(repo, view) as v:
        for i, part in enumerate(parts):
            child = None
            if node.kind == DIR and node.subtree is not None:
                child = repo.read_tree(node.subtree, v).by_name().get(part)
            if child is None:
                raise NotFound(_not_in_backup(parts, i))
            node = child
    return node


def _not_in_backup(parts: list, i: int) -> str:
    """The message for a path whose component i is missing: the path asked for, and
    where it breaks off when that is above it."""
    whole = "/" + os.fsdecode(b"/".join(parts))
    if i == len(parts) - 1:
        return f"{whole}: not in the backup"
    return f"{whole}: not in the backup (it has no {'/' + os.fsdecode(b'/'.join(parts[:i + 1]))})"


def walk(repo, root_tid: bytes, start="/", recursive: bool = True,
         include_start: bool = True, view=None) -> Iterator[Entry]:
    """Entries of the backup below start (start itself first, unless it is '/')."""
    parts = split_path(start)
    prefix = b"/".join(parts)
    links: dict = {}
    with _view(repo, view) as v:
        node = find_node(repo, root_tid, start, v)
        if prefix and include_start:
            yield _entry(prefix, node, links)
        if node.kind == DIR and node.subtree is not None:
            if recursive:
                yield from _walk_dir(repo, v, node.subtree, prefix, links)
            else:
                for child in repo.read_tree(node.subtree, v).entries:
                    yield _entry(_join(prefix, child.name), child, links)


def _join(prefix: bytes, name: bytes) -> bytes:
    return prefix + b"/" + name if prefix else name


_LINKABLE = (0o100000, 0o120000)     # the file types whose hard links are kept (REG, SYMLINK)


def _entry(path: bytes, node: Node, links: dict) -> Entry:
    if node.nlink > 1 and node.kind in (REG, SYMLINK):
        key = (node.dev, node.ino)
        first = links.get(key)
        if first is not None:
            return Entry(path, node, first)
        links[key] = path
    return Entry(path, node, None)


def _walk_dir(repo, view, tid: bytes, prefix: bytes, links: dict):
    # the hot loop of ls, tar and restore: no per-entry helper calls or tuples
    read_tree = repo.read_tree
    stack = [(prefix + b"/" if prefix else b"", iter(read_tree(tid, view).entries))]
    while stack:
        base, children = stack[-1]
        for child in children:
            path = base + child.name
            mode = child.mode & 0o170000
            if child.nlink > 1 and mode in _LINKABLE:
                yield _entry(path, child, links)
            else:
                yield Entry(path, child, None)
            if mode == 0o040000 and child.subtree is not None:
                stack.append((path + b"/", iter(read_tree(child.subtree, view).entries)))
                break
        else:
            stack.pop()
