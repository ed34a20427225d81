"""Streaming a backup (or a part of it) as a tar archive.

Headers are built with the stdlib tarfile (TarInfo.tobuf); content goes
straight from the chunks (ChunkFile.iter_data) to the output, written by a
background thread (ops.stream_out), so memory stays at a few chunks whatever
the archive's size.

Formats:
  pax    (default) everything: long and non-UTF-8 names, ns mtimes, xattrs
         (SCHILY.xattr.*, as GNU tar --xattrs writes them), POSIX ACLs also as
         SCHILY.acl.access/default (what GNU tar --acls reads: ops.tar_acl),
         big ids/sizes, and sparse files as GNU tar's PAX sparse format 1.0
         (GNU.sparse.major/minor/name/realsize, map in the data).
  gnu    long names (GNU LongLink), big numbers (base-256), sparse files as
         GNUTYPE_SPARSE members; mtimes in whole seconds; no xattrs or ACLs.
  ustar  plain POSIX: holes are written as zeros; a name, link target or value
         it cannot hold fails with TarFormatError (nothing is silently cut).

Neither gnu nor ustar can hold xattrs or ACLs (GNU tar refuses --xattrs with
them): unless the caller leaves them out (xattrs=False), a backup that has any
below start is refused with TarFormatError before anything is written.

The whole archive is read from one index snapshot taken at the start
(ops.read_snapshot), so a forget and prune of the backup meanwhile does not
take files out of it.

Sockets cannot be archived (GNU tar skips them too): they are counted in
stats["skipped"] and left out, as `chunkrepo ls` leaves them out.
"""

import os
import struct
import tarfile
import time

from ..errors import ChunkrepoError, IntegrityError, NotFound, StorageError
from ..model.nodes import BLK, CHR, DIR, FIFO, REG, SYMLINK
from ..storage.retry import is_transient
from .file_reader import ChunkFile, with_path
from .prefetch import prefetch, prefetch_threads
from .read_snapshot import backup_views
from .stream_out import StreamOut
from .tar_acl import acl_records
from .traverse import walk

BLOCK = 512
RECORD = 20 * BLOCK                 # GNU tar's default blocking factor
_ZEROS = memoryview(bytes(1 << 20))  # source of hole and padding zeros
_FORMATS = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}
_PROGRESS_EVERY = 0.2              # seconds between progress calls


def _damage(e: ChunkrepoError) -> bool:
    """What a damaged repository raises for one file's content (a blob corrupt or lost, its
    pack missing or cut short): that file is left out or zero-filled and the archive goes
    on.  Anything else (the store unreachable after the retries, the index damaged) stops it."""
    if isinstance(e, (IntegrityError, NotFound)):
        return True
    return isinstance(e, StorageError) and not is_transient(e)


_PREFETCH_BUDGET = 8 << 20         # chunks read ahead (ops.prefetch); stream_out holds 4 MiB more
_TYPES = {REG: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE,
          CHR: tarfile.CHRTYPE, BLK: tarfile.BLKTYPE, FIFO: tarfile.FIFOTYPE}


class TarFormatError(ChunkrepoError):
    """An entry that the chosen tar format cannot represent."""


def _fs(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _pax_time(ns: int) -> str:
    """A pax time value with ns precision ('-1.5' is 1.5 s before the epoch)."""
    sign = "-" if ns < 0 else ""
    s, frac = divmod(abs(ns), 10**9)
    if not frac:
        return f"{sign}{s}"
    return f"{sign}{s}.{frac:09d}".rstrip("0")


def _xattr_keyword(name: bytes) -> str:
    """GNU tar's encoding of an xattr name in a SCHILY.xattr keyword ('%' and '=' escaped)."""
    return "SCHILY.xattr." + _fs(name).replace("%", "%25").replace("=", "%3D")


def _sparse_map(node):
    """The data extents of a file with holes, GNU style: a final (size, 0) marks a trailing hole."""
    ext = [(int(o), int(n)) for o, n in node.sparse if n > 0]
    if not ext or ext[-1][0] + ext[-1][1] < node.size:
        ext.append((node.size, 0))
    return ext


def _gnu_sparse_blocks(header: bytes, ext, size: int) -> bytes:
    """Turn a GNU-format header into an old GNU sparse header (+ extension blocks)."""
    def num(n):
        return tarfile.itn(n, 12, tarfile.GNU_FORMAT)

    def entries(part):
        return b"".join(num(o) + num(n) for o, n in part)

    hdr = bytearray(header[-BLOCK:])
    first, rest = ext[:4], ext[4:]
    hdr[386:386 + 24 * len(first)] = entries(first)
    hdr[482] = 1 if rest else 0
    hdr[483:495] = num(size)
    hdr[148:156] = b"        "
    hdr[148:155] = b"%06o\0" % (sum(hdr) & 0o7777777)
    out = [bytes(header[:-BLOCK]), bytes(hdr)]
    while rest:
        part, rest = rest[:21], rest[21:]
        blk = bytearray(BLOCK)
        blk[:24 * len(part)] = entries(part)
        blk[504] = 1 if rest else 0
        out.append(bytes(blk))
    return b"".join(out)


class _TarInfo(tarfile.TarInfo):
    """TarInfo whose pax records hold raw bytes, as GNU tar writes them.

    The stdlib marks a header holding undecodable bytes with
    "hdrcharset=BINARY", which GNU tar 1.34 does not know (it warns on every
    such member); both readers take undecodable values as raw bytes without it.
    """

    __slots__ = ()

    @classmethod
    def _create_pax_generic_header(cls, pax_headers, type, encoding):
        records = []
        for keyword, value in pax_headers.items():
            rec = b" " + keyword.encode("utf-8", "surrogateescape") + b"=" \
                + value.encode("utf-8", "surrogateescape") + b"\n"
            n = len(rec) + 1
            while len(str(n)) + len(rec) != n:
                n = len(str(n)) + len(rec)
            records.append(str(n).encode("ascii") + rec)
        data = b"".join(records)
        key = (type, len(data))
        head = _PAX_HEADS.get(key)      # it depends on nothing else: build each one once
        if head is None:
            if len(_PAX_HEADS) > 4096:
                _PAX_HEADS.clear()
            info = {"name": "././@PaxHeader", "type": type, "size": len(data),
                    "magic": tarfile.POSIX_MAGIC}
            head = _PAX_HEADS[key] = cls._create_header(info, tarfile.USTAR_FORMAT, "ascii", "replace")
        return head + cls._create_payload(data)


_PAX_HEADS: dict = {}

_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_NO_DEV = b"\0" * 8


def _pax_header_fast(name: str, mode: int, uid: int, gid: int, size: int, mtime: int, typeflag: bytes,
                     linkname: str, uname: str, gname: str, devmajor: int, devminor: int, pax: dict):
    """The header tarfile writes in PAX format (byte for byte), or None for an entry
    whose numbers do not fit the ustar block (the caller uses tarfile then).

    tarfile's general path costs ~25 us per entry, a third of a whole tar run of
    small files: this one builds the block with one struct.pack.  Like tarfile,
    a text field that is not ASCII or too long for its slot goes into a pax
    record (path, linkpath, uname, gname), the slot holding an ASCII stand-in.
    """
    if (not (0 <= uid < 0o10000000 and 0 <= gid < 0o10000000)
            or not (0 <= size < 0o100000000000 and 0 <= mtime < 0o100000000000)):
        return None
    if typeflag in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        if not (0 <= devmajor < 0o10000000 and 0 <= devminor < 0o10000000):
            return None
        dmaj, dmin = b"%07o\0" % devmajor, b"%07o\0" % devminor
    else:
        dmaj = dmin = _NO_DEV
    fields = []
    for value, key, limit in ((name, "path", 100), (linkname, "linkpath", 100),
                              (uname, "uname", 32), (gname, "gname", 32)):
        if not value.isascii() or len(value) > limit:
            pax.setdefault(key, value)
            fields.append(value.encode("ascii", "replace"))   # struct.pack cuts it to the slot
        else:
            fields.append(value.encode("ascii"))
    bname, blink, buname, bgname = fields
    block = _USTAR.pack(bname, b"%07o\0" % (mode & 0o7777), b"%07o\0" % uid, b"%07o\0" % gid,
                        b"%011o\0" % size, b"%011o\0" % mtime, b"        ", typeflag, blink,
                        tarfile.POSIX_MAGIC, buname, bgname, dmaj, dmin, b"")
    block = b"%b%06o\0%b" % (block[:148], sum(block), block[155:])
    if pax:
        return _TarInfo._create_pax_generic_header(pax, tarfile.XHDTYPE, "utf-8") + block
    return block


class _Writer:
    def __init__(self, repo, out, tar_format: str, progress=None, xattrs: bool = True):
        self.repo = repo
        self.out = out
        self.name = tar_format
        self.format = _FORMATS[tar_format]
        self.xattrs = xattrs and self.format == tarfile.PAX_FORMAT    # into the archive
        self.written = 0
        self.view = None          # the index snapshot the walk reads
        self.prefetched = None    # chunk futures of the current entry (ops.prefetch)
        self.left_out: set = set()   # paths of damaged files not in the archive (their hard links follow)
        self.progress = progress
        self.next_report = time.monotonic() + _PROGRESS_EVERY
        self.stats = {"entries": 0, "files": 0, "dirs": 0, "symlinks": 0, "hardlinks": 0,
                      "devices": 0, "fifos": 0, "sparse": 0, "skipped": 0, "xattrs_dropped": 0,
                      "content_bytes": 0, "archive_bytes": 0, "warnings": [], "errors": []}

    def tick(self, pending: int = 0) -> None:
        """Call progress with the stats (plus pending content bytes of the current file), if due."""
        if self.progress is not None and time.monotonic() >= self.next_report:
            self.progress(dict(self.stats, content_bytes=self.stats["content_bytes"] + pending))
            self.next_report = time.monotonic() + _PROGRESS_EVERY

    def write(self, data) -> None:
        self.out.write(data)
        self.written += len(data)

    def zeros(self, n: int) -> None:
        while n > 0:
            k = min(n, len(_ZEROS))
            self.write(_ZEROS[:k])
            n -= k

    def header(self, ti: tarfile.TarInfo, where: str) -> bytes:
        if self.format != tarfile.PAX_FORMAT:
            for what, value in (("user name", ti.uname), ("group name", ti.gname)):
                if len(value.encode("utf-8", "surrogateescape")) > 32:
                    raise TarFormatError(f"{where}: {what} {value!r} is longer than a {self.name} "
                                         f"tar holds (32 bytes); use --format pax")
        try:
            return ti.tobuf(self.format, "utf-8", "surrogateescape")
        except (ValueError, UnicodeError) as e:
            raise TarFormatError(f"{where}: cannot be stored in a {self.name} tar ({e}); "
                                 f"use --format pax") from None

    @staticmethod
    def tarinfo(name, node, sec, typeflag, size, linkname, devmajor, devminor) -> tarfile.TarInfo:
        ti = _TarInfo(name)
        ti.mode = node.mode & 0o7777
        ti.uid, ti.gid = node.uid, node.gid
        ti.uname, ti.gname = node.user or "", node.group or ""
        ti.mtime = sec
        ti.type, ti.size, ti.linkname = typeflag, size, linkname
        ti.devmajor, ti.devminor = devmajor, devminor
        return ti

    def entry(self, e) -> None:
        node = e.node
        kind = node.kind
        st = self.stats
        if kind not in _TYPES:
            st["skipped"] += 1
            if len(st["warnings"]) < 100:
                st["warnings"].append(f"/{_fs(e.path)}: sockets cannot be stored in a tar; left out")
            return
        name = _fs(e.path)
        sec = node.mtime_ns // 10**9
        pax = {}
        if self.format == tarfile.PAX_FORMAT and node.mtime_ns != sec * 10**9:
            pax["mtime"] = _pax_time(node.mtime_ns)
        if node.xattrs:
            if self.xattrs:
                pax.update(acl_records(node.xattrs, node.mode, kind == DIR))
                for xname, value in node.xattrs:
                    pax[_xattr_keyword(bytes(xname))] = _fs(bytes(value))
            else:
                st["xattrs_dropped"] += len(node.xattrs)
        typeflag = _TYPES[kind]
        size = devmajor = devminor = 0
        linkname = ""
        sparse = None
        if e.hardlink_to is not None:
            if e.hardlink_to in self.left_out:      # its first name was damaged: no member to link to
                self.left_out.add(e.path)
                self.damaged(f"/{name}: a hard link to /{_fs(e.hardlink_to)}, which was left out: left out too")
                return
            typeflag = tarfile.LNKTYPE
            linkname = _fs(e.hardlink_to)
            st["hardlinks"] += 1
        elif kind == REG:
            size = node.size
            st["files"] += 1
            if (node.sparse is not None and self.format != tarfile.USTAR_FORMAT
                    and sum(n for _, n in node.sparse) < node.size):
                sparse = _sparse_map(node)
        elif kind == DIR:
            st["dirs"] += 1
            if not name.endswith("/"):
                name += "/"
        elif kind == SYMLINK:
            linkname = _fs(node.target)
            st["symlinks"] += 1
        elif kind in (CHR, BLK):
            devmajor, devminor = os.major(node.rdev), os.minor(node.rdev)
            st["devices"] += 1
        else:
            st["fifos"] += 1
        st["entries"] += 1

        if sparse is None:
            data = None
            if typeflag == tarfile.REGTYPE and node.size:
                try:
                    data = self.whole_chunk(e, node)
                except ChunkrepoError as exc:      # nothing written yet: the member is left out
                    if not _damage(exc):
                        raise
                    st["files"] -= 1
                    st["entries"] -= 1
                    self.left_out.add(e.path)
                    self.damaged(f"{with_path(exc, '/' + _fs(e.path))}: left out of the archive")
                    return
            head = None
            if self.format == tarfile.PAX_FORMAT:
                head = _pax_header_fast(name, node.mode, node.uid, node.gid, size, sec, typeflag, linkname,
                                        node.user or "", node.group or "", devmajor, devminor, pax)
            if head is None:
                ti = self.tarinfo(name, node, sec, typeflag, size, linkname, devmajor, devminor)
                ti.pax_headers = pax
                head = self.header(ti, "/" + _fs(e.path))
            self.write(head)
            if data is not None:
                self.write(data)
                self.stats["content_bytes"] += node.size
                self.zeros(-node.size % BLOCK)
            elif typeflag == tarfile.REGTYPE and node.size:
                self.content(e, node, fill_holes=True)
            return

        where = "/" + _fs(e.path)
        ti = self.tarinfo(name, node, sec, typeflag, size, linkname, devmajor, devminor)
        st["sparse"] += 1
        stored = sum(n for _, n in sparse)
        if self.format == tarfile.PAX_FORMAT:
            # GNU tar's PAX sparse format 1.0: the header names a stand-in, the real
            # name and size are in GNU.sparse.*, the data starts with the map.
            mapdata = "".join([f"{len(sparse)}\n"] + [f"{o}\n{n}\n" for o, n in sparse]).encode()
            maplen = -len(mapdata) % BLOCK + len(mapdata)
            head, _, base = ti.name.rpartition("/")
            stand_in = (head + "/" if head else "") + "GNUSparseFile.0/" + base
            if len(stand_in.encode("utf-8", "surrogateescape")) > 100 or not stand_in.isascii():
                stand_in = "GNUSparseFile.0/sparse"   # short and ASCII: no 'path' record
            ti.name = stand_in
            ti.size = maplen + stored
            pax.update({"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": _fs(e.path), "GNU.sparse.realsize": str(node.size)})
            ti.pax_headers = pax
            self.write(self.header(ti, where))
            self.write(mapdata)
            self.zeros(maplen - len(mapdata))
        else:
            ti.type = tarfile.GNUTYPE_SPARSE
            ti.size = stored
            self.write(_gnu_sparse_blocks(self.header(ti, where), sparse, node.size))
        self.content(e, node, fill_holes=False)

    def damaged(self, msg: str) -> None:
        self.stats["errors"].append(msg)

    def whole_chunk(self, e, node):
        """The content of a file stored as one chunk (most files: no layout to follow),
        read before its header is written; None for any other file (content() reads it)."""
        pf = self.prefetched
        if pf is None or node.sparse is not None or len(pf.sizes) != 1 or pf.sizes[0] is None:
            return None
        self.prefetched = None
        where = _fs(e.path)
        try:
            data = next(pf.data())
        except ChunkrepoError as exc:
            raise with_path(exc, "/" + where) from None
        if len(data) != node.size:
            raise IntegrityError(f"/{where}: stored content is shorter than its size" if len(data) < node.size
                                 else f"/{where}: stored data does not match the file's layout")
        return data

    def content(self, e, node, fill_holes: bool) -> None:
        """The file's bytes (holes as zeros if fill_holes, else only the data), then padding.
        Its header is out already: content that cannot be read is replaced by zeros up to
        the size the header gave (GNU tar's "padding with zeros"), reported in stats["errors"]."""
        where = _fs(e.path)
        pos = 0         # next file offset expected
        total = 0       # bytes written
        want = node.size if fill_holes else sum(n for _, n in node.sparse)
        pf, self.prefetched = self.prefetched, None     # chunks read ahead for this entry
        f = ChunkFile(self.repo, node, b"/" + e.path, self.view, pf.sizes if pf is not None else None)
        try:
            for off, view in f.iter_data(pf.data() if pf is not None else None):
                if off < pos or off + len(view) > node.size or total + len(view) > want:
                    raise IntegrityError(f"/{where}: stored data does not match the file's layout")
                if fill_holes and off > pos:
                    self.zeros(off - pos)
                    total += off - pos
                self.write(view)
                total += len(view)
                pos = off + len(view)
                self.tick(total)
            if fill_holes and pos < node.size and node.sparse is not None:
                self.zeros(node.size - pos)
                total += node.size - pos
            if total != want:
                raise IntegrityError(f"/{where}: stored content is shorter than its "
                                     + ("size" if fill_holes else "data extents"))
        except ChunkrepoError as exc:
            if not _damage(exc):
                raise
            self.damaged(f"{with_path(exc, '/' + where)}: bytes {total} to {want} are zeros in the archive")
            self.zeros(want - total)
            total = want
        finally:
            f.close()
        self.stats["content_bytes"] += total
        self.zeros(-total % BLOCK)

    def finish(self) -> None:
        self.zeros(2 * BLOCK)
        self.zeros(-self.written % RECORD)
        self.stats["archive_bytes"] = self.written


def _refuse_xattrs(entries, tar_format: str) -> None:
    """TarFormatError naming the first entry with xattrs or ACLs, which tar_format cannot hold."""
    for e in entries:
        if e.node.xattrs and e.node.kind in _TYPES:
            raise TarFormatError(f"/{_fs(e.path)}: has extended attributes or ACLs, which a {tar_format} "
                                 f"tar cannot hold; use --format pax, or --no-xattrs to leave them out")


def write_tar(repo, root_tid, out, start="/", recursive=True, tar_format="pax", progress=None,
              direct: bool = False, xattrs: bool = True, backup_id=None) -> dict:
    """Stream the backup tree root_tid (from start) as a tar to the binary file out.

    Returns stats: entries, files, dirs, symlinks, hardlinks, devices, fifos,
    sparse, skipped (sockets), xattrs_dropped, content_bytes, archive_bytes,
    warnings, errors.  A file whose content a damaged repository cannot give (a
    blob corrupt or lost, its pack missing) is named in errors and left out of
    the archive when it is one chunk (read before its header), else zero-filled
    from where the damage begins (its header gave the size already), as GNU tar
    pads a file that shrank; the archive goes on either way.  Other failures
    (the store unreachable, the index damaged) raise, as does TarFormatError for
    what the format cannot hold.
    xattrs=False leaves xattrs and ACLs out (counted in xattrs_dropped); with
    the gnu or ustar format, which cannot hold them, a tree that has any is
    refused (TarFormatError) before anything is written unless xattrs=False.
    backup_id (the backup root_tid is the root of): a backup forgotten and
    pruned since it was looked up raises read_snapshot.BackupRemoved, not damage.
    progress, if given, is called with (a copy of) the running stats about
    every 0.2 s and once at the end.  direct: out is a file of the caller's own (no
    other process shares its descriptor), to be written with O_DIRECT (ops.stream_out).
    """
    if tar_format not in _FORMATS:
        raise ChunkrepoError(f"unknown tar format {tar_format!r} (use pax, gnu or ustar)")
    # the consumer's view (the walk, its lookups) and one per read thread, opened together
    with backup_views(repo, 1 + prefetch_threads(repo), root_tid, backup_id) as views:
        if xattrs and tar_format != "pax":
            _refuse_xattrs(walk(repo, root_tid, start, recursive, view=views[0]), tar_format)
        stream = StreamOut(out, direct)     # the writes to out overlap the work of the next entries
        try:
            w = _Writer(repo, stream, tar_format, progress, xattrs)
            w.view = views[0]
            entries = walk(repo, root_tid, start, recursive, view=w.view)
            for e, w.prefetched in prefetch(repo, entries, budget=_PREFETCH_BUDGET, views=views):
                w.entry(e)
                w.tick()
            w.finish()
        except BaseException:
            stream.abort()
            raise
        stream.close()
    if progress is not None:
        progress(dict(w.stats))
    return w.stats
