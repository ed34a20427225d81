"""BLAKE3-256 ids: every chunk and record is named by the hash of its raw bytes."""

from blake3 import blake3

ID_SIZE = 32


def hash_bytes(data) -> bytes:
    """The 32-byte BLAKE3 digest of data (bytes, bytearray or memoryview)."""
    return blake3(data).digest()


def new_hasher():
    """An incremental BLAKE3 hasher (update/digest/hexdigest)."""
    return blake3()
