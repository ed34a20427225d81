"""The LMDB index: the only importer of lmdb.

Named databases of one environment:
  chunks     chunk id (32 B)  -> BlobEntry (pack, offset, length, raw length, refcount)
  trees      tree id (32 B)   -> BlobEntry of a directory record
  treedata   tree id          -> the directory record's bytes (a cache of the pack copy)
  packs      pack id (16 B)   -> msgpack [size, blob count, dead bytes, dead blobs]
  backups    backup id (hex)  -> backup record JSON
  meta       str              -> bytes (index generation, format; the journals of a pack
                                 committed and a backup registered in steps)
  garbage    pack id + blob id -> <BI kind, stored length: stored blobs nothing references
  pending    pack id (16 B)   -> msgpack [txn id, size]: dropped packs whose file awaits deletion

Invariant: an entry in chunks/trees points into a pack that is durable in the
storage.  Reference counts count backups (for roots) and directory records with
refcount >= 1 (for their children); see docs/format.md.
"""

from .lmdb_index import (KIND_CHUNK, KIND_TREE, BlobEntry, GarbageEntry, Index, PackInfo, ReadView,
                         WriteView, read_only_reason)

__all__ = ["BlobEntry", "GarbageEntry", "Index", "KIND_CHUNK", "KIND_TREE", "PackInfo", "ReadView",
           "WriteView", "read_only_reason"]
