"""POSIX ACLs as GNU tar writes them in a pax archive (SCHILY.acl.access/default).

A backup holds a file's ACLs as the kernel gives them: the extended attributes
system.posix_acl_access and system.posix_acl_default, in Linux's binary form
(a little-endian u32 version 2, then per entry a u16 tag, a u16 permission
set and a u32 user or group id).  GNU tar with --acls reads and writes them as
the records SCHILY.acl.access and SCHILY.acl.default instead, in the long text
form of POSIX.1e draft 17 (libacl's acl_to_text): one entry per line, each
line ending in a newline, e.g. "user::rw-\\nuser:12345:rw-\\ngroup::r--\\n
mask::rw-\\nother::r--\\n".  On extraction it sets ACLs from these records only:
the system.* attributes are skipped unless --xattrs-include names them.

What GNU tar 1.34 writes, and so what acl_records gives:
* nothing for a file whose ACLs the permission bits say all about (no
  extended access ACL, and no default ACL on a directory);
* otherwise SCHILY.acl.access (from the permission bits when there is no
  access ACL attribute) and, for a directory, SCHILY.acl.default, empty
  when it has none.
Qualifiers are numeric ids, as GNU tar writes them with --numeric-owner: the
backup holds ids only, and a name looked up on the host that writes the
archive could belong to someone else there.
"""

import struct
from typing import Dict, Optional

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"

_VERSION = 2
_HEAD = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
_TAGS = {0x01: "user::", 0x02: "user:", 0x04: "group::", 0x08: "group:", 0x10: "mask::", 0x20: "other::"}
_NAMED = (0x02, 0x08)


def _perms(p: int) -> str:
    return ("r" if p & 4 else "-") + ("w" if p & 2 else "-") + ("x" if p & 1 else "-")


def acl_text(value: bytes) -> Optional[str]:
    """The long text form of a system.posix_acl_* value; None for a value that is not one
    (it then stays only in its SCHILY.xattr record)."""
    if len(value) < _HEAD.size or (len(value) - _HEAD.size) % _ENTRY.size \
            or _HEAD.unpack_from(value)[0] != _VERSION:
        return None
    lines = []
    for tag, perm, qid in _ENTRY.iter_unpack(value[_HEAD.size:]):
        prefix = _TAGS.get(tag)
        if prefix is None:
            return None
        lines.append(f"{prefix}{qid}:{_perms(perm)}\n" if tag in _NAMED else f"{prefix}{_perms(perm)}\n")
    return "".join(lines)


def _from_mode(mode: int) -> str:
    """The access ACL the permission bits make (what libacl gives for a file without one)."""
    return f"user::{_perms(mode >> 6)}\ngroup::{_perms(mode >> 3)}\nother::{_perms(mode)}\n"


def acl_records(xattrs, mode: int, is_dir: bool) -> Dict[str, str]:
    """The SCHILY.acl.* records of a node with these xattrs ([(name, value)]) and mode."""
    access = default = None
    for name, value in xattrs or ():
        name = bytes(name)
        if name == ACCESS:
            access = acl_text(bytes(value))
        elif name == DEFAULT and is_dir:
            default = acl_text(bytes(value))
    extended = access is not None and access.count("\n") > 3     # more than user::, group::, other::
    if not extended and not default:
        return {}
    records = {"SCHILY.acl.access": access if extended else _from_mode(mode)}
    if is_dir:
        records["SCHILY.acl.default"] = default or ""
    return records
