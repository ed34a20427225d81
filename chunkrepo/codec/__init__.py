"""Pure byte transforms, one third-party library each.

chunking (pyfastcdc), hashing (blake3), compression (zstandard), records
(msgpack).  Nothing here does I/O or knows about repositories.
"""
