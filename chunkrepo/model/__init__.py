"""Records of a backup as plain values: Node (one directory entry), Tree, BackupRecord.

No I/O here.  Nodes are NamedTuples so that decoding a directory record of
thousands of entries is one tuple construction per entry.
"""

from .nodes import Node, Tree, node_from_stat, kind_of
from .backup import BackupRecord, decode_record, record_id

__all__ = ["Node", "Tree", "node_from_stat", "kind_of", "BackupRecord", "decode_record", "record_id"]
