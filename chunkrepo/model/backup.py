"""BackupRecord: what one backup (or snapshot) is: where, when, its root, its counts."""

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class BackupRecord:
    id: str                      # hex
    host: str
    subset: str
    paths: list
    start_ns: int
    end_ns: Optional[int]        # None while incomplete
    root: str                    # hex directory record id of "/"
    kind: str = "backup"         # "backup" or "snapshot"
    stats: dict = field(default_factory=dict)
    version: int = 1
    # kind "snapshot" only: {"type": "file"|"dir", "digest", "name", "relpath", "original_path",
    # "time_ns", "content_length", "files"} (see docs/snapshots.md); absent from other records
    snapshot: Optional[dict] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["snapshot"] is None:
            del d["snapshot"]      # records without it keep their bytes (and so their ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BackupRecord":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)
