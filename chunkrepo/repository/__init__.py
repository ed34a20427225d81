"""The repository: config, packs, chunk store, locking and the write session.

Write order (the invariant that makes a kill -9 harmless at any instant):
packs durable in the storage -> their entries in the index -> backup record in
the storage -> backup + reference counts in the index.  Anything written
before the last step is unreferenced and is either adopted by the next write
session (sealed packs, stored backup records) or removed by prune.
"""

from .repository import Repository

__all__ = ["Repository"]
