"""Record encoding: directory records with msgpack, backup records with JSON.

A directory record is msgpack ``[TREE_RECORD_VERSION, [entry, ...]]`` where each
entry is the positional list of a model.Node (see docs/format.md).  Encoding
is canonical for a given list of entries, so equal directories hash equal.
"""

import json

import msgpack

TREE_RECORD_VERSION = 1


def encode_tree(entries) -> bytes:
    """entries: sequences of plain values (Node tuples), sorted by name."""
    return msgpack.packb([TREE_RECORD_VERSION, entries], use_bin_type=True)


def decode_tree(data) -> list:
    """Return the list of raw entry lists of a directory record."""
    version, entries = msgpack.unpackb(data, raw=False, use_list=True)
    if version != TREE_RECORD_VERSION:
        raise ValueError(f"unknown directory record version {version}")
    return entries


def encode_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def decode_json(data) -> dict:
    return json.loads(data)


def pack_msgpack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_msgpack(data):
    return msgpack.unpackb(data, raw=False, use_list=True)
