"""The repository config: format version, id, chunker, hash, compression."""

import datetime
import os
from dataclasses import dataclass, field

from ..codec import records
from ..codec.chunking import ChunkerParams
from ..errors import FormatVersionError, NotARepository

FORMAT_NAME = "chunkrepo"
FORMAT_VERSION = 1
CONFIG_NAME = "config"


@dataclass
class Config:
    repo_id: str = field(default_factory=lambda: os.urandom(16).hex())
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    hash: str = "blake3-256"
    compression: str = "zstd"
    compression_level: int = 3
    pack_size: int = 32 * 1024 * 1024
    encryption: str = "none"
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat())
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        return records.encode_json({
            "format": FORMAT_NAME, "version": self.version, "id": self.repo_id,
            "chunker": self.chunker.to_dict(), "hash": self.hash,
            "compression": {"algorithm": self.compression, "level": self.compression_level},
            "pack_size": self.pack_size, "encryption": self.encryption, "created": self.created,
        })

    @classmethod
    def decode(cls, data: bytes, where: str) -> "Config":
        try:
            d = records.decode_json(data)
        except ValueError:
            raise NotARepository(f"{where}: config is not a chunkrepo config") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise NotARepository(f"{where} is not a chunkrepo repository")
        version = d.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{where} has repository format version {version}; this chunkrepo reads "
                f"up to version {FORMAT_VERSION}: upgrade chunkrepo")
        if d["hash"] != "blake3-256" or d["compression"]["algorithm"] != "zstd" or d["encryption"] != "none":
            raise FormatVersionError(f"{where} uses features this chunkrepo does not know")
        return cls(d["id"], ChunkerParams.from_dict(d["chunker"]), d["hash"],
                   d["compression"]["algorithm"], int(d["compression"]["level"]),
                   int(d["pack_size"]), d["encryption"], d["created"], version)
