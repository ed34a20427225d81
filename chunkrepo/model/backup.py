"""BackupRecord: what one backup (or snapshot) is: where, when, its root, its counts."""

from dataclasses import asdict, dataclass, field
from typing import Optional

from ..codec import records
from ..codec.hashing import hash_bytes


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


def record_id(d: dict) -> str:
    """A backup's id: the first 16 bytes of the BLAKE3 of its canonical JSON with "id": ""."""
    return hash_bytes(records.encode_json({**d, "id": ""}))[:16].hex()


def decode_record(raw: bytes, bid: str) -> BackupRecord:
    """The stored record of backup bid (backups/<bid>, or the index's copy), verified:
    ValueError saying why if the bytes are not that backup's record (damaged)."""
    try:
        d = records.decode_json(raw)
        rec = BackupRecord.from_dict(d)
        root = bytes.fromhex(rec.root)
    except Exception as e:        # bad JSON, not an object, a field missing or of the wrong type
        raise ValueError(f"undecodable: {type(e).__name__}") from None
    if rec.id != bid or len(root) != 32 or record_id(d) != bid:
        raise ValueError("its content does not hash to its id")
    return rec
