"""Directory records finished in post-order once the files in them are done."""

import collections
import operator
from typing import List, Optional

from ...model import Node, Tree


class Batch:
    """Files read together by one pool task; future is set when it is submitted."""

    __slots__ = ("items", "nbytes", "future")

    def __init__(self):
        self.items: Optional[list] = []   # None once submitted
        self.nbytes = 0
        self.future = None


class PendingFile:
    """A file handed to the pool: resolves to a Node, or None when it was skipped."""

    __slots__ = ("batch", "index", "alias")

    def __init__(self, batch: Batch, index: int, alias: Optional[bytes] = None):
        self.batch = batch
        self.index = index
        self.alias = alias   # hard link: the same content under another name

    def done(self) -> bool:
        f = self.batch.future
        return f is not None and f.done()

    def result(self) -> Optional[Node]:
        node = self.batch.future.result()[self.index]
        if node is not None and self.alias is not None:
            node = node._replace(name=self.alias)
        return node


class PendingDir:
    """A directory whose record is written once all children are resolved."""

    __slots__ = ("node", "children", "result", "prev", "prev_entries", "waiting", "plain")

    def __init__(self, node: Node, children: list, prev: Optional[Node] = None, prev_entries=None):
        self.node = node            # the directory's own entry, subtree still None
        self.children = children    # Node | PendingFile | PendingDir
        self.result: Optional[Node] = None
        self.prev = prev            # the same directory in the previous backup
        self.prev_entries = prev_entries
        self.waiting = [c for c in children if type(c) is not Node]   # files being read, subdirectories
        self.plain = not self.waiting                                  # every child is a Node already

    def ready(self) -> bool:
        w = self.waiting
        while w and (type(w[-1]) is PendingDir or w[-1].done()):
            w.pop()    # a subdirectory is finished before its parent (the queue is in post-order)
        return not w


class TreeSaver:
    """Keeps the FIFO of pending directories and writes their records."""

    def __init__(self, session, submit_open_batch, max_pending_dirs: int = 2000):
        self.session = session
        self.submit_open_batch = submit_open_batch   # called before waiting on results
        self.queue: "collections.deque[PendingDir]" = collections.deque()
        self.max_pending = max_pending_dirs

    def add(self, pd: PendingDir) -> None:
        self.queue.append(pd)
        self.drain(block=len(self.queue) > self.max_pending)

    def drain(self, block: bool = False) -> None:
        q = self.queue
        if block:
            self.submit_open_batch()
        while q and (block or q[0].ready()):
            self._finish(q.popleft())
            if block and len(q) <= self.max_pending // 2:
                block = False
        self.session.checkpoint()

    def finish_all(self) -> None:
        self.submit_open_batch()
        while self.queue:
            self._finish(self.queue.popleft())
        self.session.checkpoint()

    def _finish(self, pd: PendingDir) -> None:
        if pd.plain:
            entries: List[Node] = pd.children
        else:
            entries = []
            for c in pd.children:
                if isinstance(c, PendingFile):
                    node = c.result()
                elif isinstance(c, PendingDir):
                    node = c.result
                else:
                    node = c
                if node is not None:
                    entries.append(node)
        prev = pd.prev
        if (prev is not None and pd.prev_entries is not None and len(entries) == len(pd.prev_entries)
                and all(map(operator.is_, entries, pd.prev_entries))):
            tid = prev.subtree       # the very same entries: the same record, nothing to encode
        else:
            entries.sort(key=lambda n: n.name)
            tid = self.session.add_tree(Tree(entries))
        result = pd.node._replace(subtree=tid)
        pd.result = prev if prev is not None and result == prev else result
        pd.children = []
        pd.prev_entries = None
