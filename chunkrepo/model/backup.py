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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BackupRecord":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)
