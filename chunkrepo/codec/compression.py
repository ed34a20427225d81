"""Chunk compression: a one-byte header says how the payload is stored.

Format of a stored blob: 1 header byte, then the payload.
  0x00  raw bytes (compression did not help)
  0x01  zstd frame
The header lets readers decode any blob without consulting the config, and
leaves room for an encrypted envelope later (header values 0x80 and up).
"""

import threading

import zstandard

from ..errors import IntegrityError

RAW = 0
ZSTD = 1
_HEADER_RAW = b"\x00"
_HEADER_ZSTD = b"\x01"

_local = threading.local()


def _compressor(level: int) -> "zstandard.ZstdCompressor":
    # One compressor per thread and level: creating one per chunk costs ~15 us
    # and zstandard contexts are not thread-safe.
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level)
    return comp


def _decompressor() -> "zstandard.ZstdDecompressor":
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def compress(data, level: int = 3) -> bytes:
    """Return header + payload; stored raw when zstd does not save space."""
    return b"".join(compress_parts(data, level))


def compress_parts(data, level: int = 3) -> tuple:
    """(header, payload) of the blob compress() returns, without joining them: a
    writer appends both, and a chunk of megabytes is not copied once more (raw
    chunks are returned as given, so data must stay valid until written).
    Any level makes the same kind of zstd frame: readers need not know it."""
    z = _compressor(level).compress(data)
    if len(z) < len(data):
        return _HEADER_ZSTD, z
    return _HEADER_RAW, data


def decompress(blob, raw_length: int) -> bytes:
    """Inverse of compress; raw_length is the expected size of the result."""
    if not blob:
        raise IntegrityError("empty blob")
    header = blob[0]
    if header == RAW:
        out = bytes(blob[1:])
    elif header == ZSTD:
        try:
            out = _decompressor().decompress(blob[1:], max_output_size=raw_length)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"corrupt compressed blob: {e}") from None
    else:
        raise IntegrityError(f"unknown blob header byte {header:#x}")
    if len(out) != raw_length:
        raise IntegrityError(f"blob decodes to {len(out)} bytes, expected {raw_length}")
    return out


def decompress_view(blob, raw_length: int, out):
    """decompress() without a new object for the result: a raw blob's payload is
    returned as a view of blob, a zstd frame is decoded into out (a writable buffer
    of raw_length bytes or more, reused by the caller) and its first raw_length
    bytes are returned.  The result is valid as long as blob and out are unchanged.
    A frame that decodes to more than raw_length bytes is not noticed here: callers
    verify the result's hash."""
    blob = memoryview(blob)
    if not blob:
        raise IntegrityError("empty blob")
    header = blob[0]
    if header == RAW:
        view = blob[1:]
    elif header == ZSTD:
        view = memoryview(out)[:raw_length]
        try:
            n = _decompressor().stream_reader(blob[1:]).readinto(view)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"corrupt compressed blob: {e}") from None
        if n != raw_length:
            raise IntegrityError(f"blob decodes to {n} bytes, expected {raw_length}")
        return view
    else:
        raise IntegrityError(f"unknown blob header byte {header:#x}")
    if len(view) != raw_length:
        raise IntegrityError(f"blob decodes to {len(view)} bytes, expected {raw_length}")
    return view
