"""The local, read-only, content-addressed cache of snapshot content.

    CACHE/objects/ab/<digest>   a file's whole content, named by its BLAKE3 (b3sum) digest, mode 0444
    CACHE/stamps/ab/<digest>.1.<size>.<mtime_ns>.<ctime_ns>.<ino>.<nlink>
                                an empty file named by the object's lstat when it was last
                                known to hold its digest's content
    CACHE/notes/ab/<digest>     msgpack [size, chunk ids, sparse]: how the repository stores that content
    CACHE/refs/ab/<key>         the digest of a stored file known by its chunk list (clones of backups)
    CACHE/dirs/<digest>/        restore_safe() of a directory snapshot: a tree of links into objects/
    CACHE/changed/<digest>-<ns> an object found changed (written through a restored link), kept
    CACHE/links                 one absolute path per line: where restores and clones put links
    CACHE/tmp/                  work files (same filesystem as objects/, so rename is atomic)

The cache location is resolved at call time (paths.cache_dir(): $CHUNKREPO_CACHE_DIR or the
user's cache dir).  An object is written to tmp/ with its holes, verified against its digest
while written, given an mtime 1 s in the past, fsync'ed, made read-only and renamed into place:
a reader never sees a partial object.

Mode 0444 does not stop root, nor a chmod through a restored link or hard link, so an object is
trusted only while its lstat matches its stamp (see _settled); otherwise it is hashed again.  An
object that no longer holds its digest's content is never handed out: it is set aside in
changed/ (with a warning) when the content is fetched again, and a snapshot or backup of a link
to it reads what the link shows.
"""

import os
import shutil
import stat
import tempfile
import time
import warnings
from typing import Iterator, Optional, Tuple

import msgpack

from ... import paths
from ...codec.hashing import new_hasher
from ...errors import IntegrityError
from ..extents import data_extents

_READ_BLOCK = 4 << 20
_ZEROS = memoryview(bytes(1 << 20))
_HOLE_BLOCK = 64 << 10
_ZERO_BLOCK = bytes(_HOLE_BLOCK)
HEX = frozenset("0123456789abcdef")
STAMP_VERSION = 1
_STAMP_SEP = f".{STAMP_VERSION}."      # stamps/ab/<digest>.1.<stamp>
SETTLE_NS = 1_000_000_000       # an object's mtime is set this far back: any later write differs
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def is_digest(s) -> bool:
    return isinstance(s, str) and len(s) == 64 and set(s) <= HEX


def content_key(node) -> str:
    """A key for a stored file's content from its chunk list (no data read)."""
    h = new_hasher()
    h.update(b"chunkrepo-content\0")
    h.update(msgpack.packb([node.size, node.chunks, node.sparse], use_bin_type=True))
    return h.hexdigest()


# -- content with holes -------------------------------------------------------------
def file_pieces(fd: int, size: int) -> Iterator[Tuple[int, bytes]]:
    """(offset, bytes) of a file's data, its holes skipped (SEEK_DATA / SEEK_HOLE)."""
    for off, length in data_extents(fd, size):
        end = off + length
        while off < end:
            data = os.pread(fd, min(_READ_BLOCK, end - off), off)
            if not data:
                return
            yield off, data
            off += len(data)


def _hash_zeros(h, n: int) -> None:
    while n > 0:
        k = min(n, len(_ZEROS))
        h.update(_ZEROS[:k])
        n -= k


def _pwrite_all(fd: int, view, off: int) -> None:
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def _is_zero(block) -> bool:
    return block[0] == 0 and block[-1] == 0 and bytes(block) == (
        _ZERO_BLOCK if len(block) == _HOLE_BLOCK else bytes(len(block)))


def _write_data(fd: int, data, off: int) -> None:
    """pwrite data at off, its all-zero blocks (_HOLE_BLOCK, aligned in the file) left as holes
    (what `cp --sparse=always` does: a snapshot does not record holes, zeros are zeros)."""
    view = memoryview(data)
    i, start = 0, None
    while i < len(view):
        j = min(len(view), i + _HOLE_BLOCK - (off + i) % _HOLE_BLOCK)
        zero = _is_zero(view[i:j])
        if zero and start is not None:
            _pwrite_all(fd, view[start:i], off + start)
            start = None
        elif not zero and start is None:
            start = i
        i = j
    if start is not None:
        _pwrite_all(fd, view[start:], off + start)


def write_pieces(fd: Optional[int], pieces, size: int, h=None) -> int:
    """Write (offset, bytes) pieces, in order, at their offsets (gaps and zero blocks stay holes) and make
    the file size long; h, if given, hashes the whole content, the holes' zeros too (fd None:
    only hash).  Returns the bytes of data."""
    end = done = 0
    for off, data in pieces:
        if off < end or off + len(data) > size:
            raise IntegrityError(f"content pieces out of order or past the size {size}")
        if h is not None:
            _hash_zeros(h, off - end)
            h.update(data)
        if fd is not None:
            _write_data(fd, data, off)
        end = off + len(data)
        done += len(data)
    if h is not None:
        _hash_zeros(h, size - end)
    if fd is not None:
        os.ftruncate(fd, size)     # (zero blocks at the end were not written)
    return done


def _stamp(st) -> str:
    """An lstat as a stamp: "size.mtime_ns.ctime_ns.ino.nlink"."""
    return f"{st.st_size}.{st.st_mtime_ns}.{st.st_ctime_ns}.{st.st_ino}.{st.st_nlink}"


def _settled(stamp: str, st) -> bool:
    """st is still the object the stamp recorded: same size, mtime (which every write changes:
    the object's mtime lies in the past) and inode, not writable, and the same ctime unless the
    link count changed (a hard link made or removed: nothing else changed)."""
    try:
        size, mtime, ctime, ino, nlink = map(int, stamp.split("."))
    except ValueError:
        return False
    return (size == st.st_size and mtime == st.st_mtime_ns and ino == st.st_ino
            and not st.st_mode & 0o222 and (ctime == st.st_ctime_ns or nlink != st.st_nlink))


class LocalCache:
    def __init__(self, root: Optional[str] = None):
        self.root = os.path.abspath(root) if root else paths.cache_dir()
        self._verdicts: dict = {}       # digest -> (its lstat stamp, intact) seen by this instance
        self._stamp_dirs: dict = {}     # "ab" -> {digest: [stamps]}: stamps/ab listed once

    # -- names ----------------------------------------------------------------
    @property
    def objects(self) -> str:
        return os.path.join(self.root, "objects")

    def object_path(self, digest: str) -> str:
        return f"{self.root}/objects/{digest[:2]}/{digest}"       # (a format, not join: per link)

    def dir_path(self, digest: str) -> str:
        return os.path.join(self.root, "dirs", digest)

    def _side(self, kind: str, key: str) -> str:
        return f"{self.root}/{kind}/{key[:2]}/{key}"

    def tmpdir(self) -> str:
        d = os.path.join(self.root, "tmp")
        os.makedirs(d, exist_ok=True)
        return d

    def digest_of_link_target(self, link_path, target) -> Optional[str]:
        """The digest when a symlink at link_path with this target points at a cache object."""
        t = os.fsdecode(target)
        if not os.path.isabs(t):
            t = os.path.join(os.path.dirname(os.path.abspath(os.fsdecode(link_path))), t)
        t = os.path.normpath(t)
        name = os.path.basename(t)
        if not is_digest(name):
            return None
        parent = os.path.dirname(t)
        if os.path.basename(parent) != name[:2]:
            return None
        objects = os.path.dirname(parent)
        if objects == self.objects:
            return name
        try:      # the same directory under another spelling (a symlinked $HOME, ...)
            if os.path.samefile(objects, self.objects):
                return name
        except OSError:
            pass
        return None

    # -- objects --------------------------------------------------------------
    def has(self, digest: str, size: Optional[int] = None) -> bool:
        """The object is there and holds its digest's content."""
        try:
            st = os.lstat(self.object_path(digest))
        except OSError:
            return False
        return (size is None or st.st_size == size) and self._intact(digest, st)

    def changed(self, digest: str) -> bool:
        """An object is there but does not hold its digest's content (anymore)."""
        try:
            st = os.lstat(self.object_path(digest))
        except OSError:
            return False
        return not self._intact(digest, st)

    def _intact(self, digest: str, st) -> bool:
        if not stat.S_ISREG(st.st_mode):
            return False
        now = _stamp(st)
        seen = self._verdicts.get(digest)
        if seen is not None and seen[0] == now:
            return seen[1]
        stamps = self._stamps(digest)
        if now in stamps and not st.st_mode & 0o222:
            ok = True
        elif any(_settled(s, st) for s in stamps):
            self._write_stamp(digest, st)          # a hard link made or removed since
            ok = True
        else:
            ok = self._verify(digest)
        self._verdicts[digest] = (now, ok)
        return ok

    def _verify(self, digest: str) -> bool:
        """Hash the object; an intact one gets a fresh stamp.  A writable one (a chmod through a
        link) is replaced by a read-only copy when intact: whoever holds its inode keeps it."""
        path = self.object_path(digest)
        try:
            fd = os.open(path, _O_READ)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return False
            if st.st_mode & 0o222:
                return self._renew(digest, fd, st)
            h = new_hasher()
            write_pieces(None, file_pieces(fd, st.st_size), st.st_size, h)
            ok = h.hexdigest() == digest and _stamp(os.fstat(fd)) == _stamp(st)
        except OSError:
            return False
        finally:
            os.close(fd)
        if ok and st.st_mtime_ns < time.time_ns() - SETTLE_NS:
            self._write_stamp(digest, st)     # (a recent mtime: a write may follow within its tick)
        return ok

    def _renew(self, digest: str, fd: int, st) -> bool:
        start = time.time_ns()
        tfd, tmp = self._new_tmp()
        try:
            h = new_hasher()
            try:
                write_pieces(tfd, file_pieces(fd, st.st_size), st.st_size, h)
            finally:
                self._seal(tfd, start)
            if h.hexdigest() != digest or _stamp(os.fstat(fd)) != _stamp(st):
                return False
            path = self.object_path(digest)
            os.rename(tmp, path)
            self._write_stamp(digest, os.lstat(path))
            return True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _new_tmp(self) -> Tuple[int, str]:
        return tempfile.mkstemp(dir=self.tmpdir(), prefix="obj-")

    @staticmethod
    def _seal(fd: int, start_ns: int) -> None:
        """Make a written object's file final: mtime in the past, read-only, on disk, closed."""
        try:
            past = start_ns - SETTLE_NS
            os.utime(fd, ns=(past, past))
            os.fchmod(fd, 0o444)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _stamps(self, digest: str) -> list:
        """The stamps recorded for digest.  A stamp is an empty file whose name holds it, so the
        stamps of a whole prefix come from one listing (a snapshot meets thousands of links)."""
        pre = digest[:2]
        table = self._stamp_dirs.get(pre)
        if table is None:
            table = self._stamp_dirs[pre] = {}
            try:
                with os.scandir(f"{self.root}/stamps/{pre}") as it:
                    for e in it:
                        digest_, _, rest = e.name.partition(_STAMP_SEP)
                        if rest:
                            table.setdefault(digest_, []).append(rest)
            except OSError:
                pass
        return table.get(digest, [])

    def _write_stamp(self, digest: str, st) -> None:
        """Record st as digest's stamp and drop its others (a stale stamp that survives a race
        is harmless: it describes a state the object was verified in)."""
        d = f"{self.root}/stamps/{digest[:2]}"
        new = _stamp(st)
        old = [s for s in self._stamps(digest) if s != new]
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            try:
                os.close(os.open(f"{d}/{digest}{_STAMP_SEP}{new}", flags, 0o444))
            except FileNotFoundError:
                os.makedirs(d, exist_ok=True)
                os.close(os.open(f"{d}/{digest}{_STAMP_SEP}{new}", flags, 0o444))
            for s in old:
                try:
                    os.unlink(f"{d}/{digest}{_STAMP_SEP}{s}")
                except FileNotFoundError:
                    pass
        except OSError:
            return        # (a read-only cache: its objects are hashed at each use)
        self._stamp_dirs[digest[:2]][digest] = [new]

    def put_pieces(self, digest: Optional[str], pieces, size: int, data_length: Optional[int] = None) -> str:
        """Write content given as (offset, bytes) pieces, holes between them, as the object
        digest (None: named by its content).  Verified while written; returns the digest."""
        start = time.time_ns()
        fd, tmp = self._new_tmp()
        try:
            h = new_hasher()
            try:
                n = write_pieces(fd, pieces, size, h)
            except BaseException:
                os.close(fd)
                raise
            self._seal(fd, start)
            got = h.hexdigest()
            if (data_length is not None and n != data_length) or (digest is not None and got != digest):
                raise IntegrityError(f"content for {digest or got} does not match: "
                                     f"{n} bytes of data with digest {got}")
            self._install(tmp, got, size)
            return got
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _install(self, tmp: str, digest: str, size: int) -> None:
        dest = self.object_path(digest)
        if self.has(digest, size):
            return                         # an intact object is never rewritten
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.lexists(dest):
            self._set_aside(digest)
        os.rename(tmp, dest)    # no fsync of the directory: a lost rename is fetched again
        st = os.lstat(dest)
        self._write_stamp(digest, st)
        self._verdicts[digest] = (_stamp(st), True)

    def _set_aside(self, digest: str) -> None:
        """A changed object: moved to changed/ (what a restored link showed is kept), warned."""
        keep = os.path.join(self.root, "changed", f"{digest}-{time.time_ns()}")
        os.makedirs(os.path.dirname(keep), exist_ok=True)
        os.rename(self.object_path(digest), keep)
        warnings.warn(f"cache object {digest[:16]}... was changed after it was written (through a "
                      f"restored link or hard link?); fetched it again, the changed content is in {keep}",
                      stacklevel=2)

    def put_file(self, chunk_file, digest: Optional[str], size: int) -> str:
        """Materialise a stored file (a ChunkFile) as an object, with its holes."""
        return self.put_pieces(digest, chunk_file.iter_data(), size, chunk_file.data_length)

    # -- notes: digest -> how the repository stores it; refs: chunk list -> digest --
    def _put_small(self, path: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, path)

    def put_note(self, digest: str, node) -> None:
        path = self._side("notes", digest)
        if not os.path.exists(path):
            self._put_small(path, msgpack.packb([node.size, node.chunks, node.sparse], use_bin_type=True))
        ref = self._side("refs", content_key(node))
        if not os.path.exists(ref):
            self._put_small(ref, digest.encode())

    def note(self, digest: str):
        """(size, chunks, sparse) of a digest this cache has seen stored, or None."""
        try:
            with open(self._side("notes", digest), "rb") as f:
                size, chunks, sparse = msgpack.unpackb(f.read(), raw=False)
            return size, chunks, sparse
        except (OSError, ValueError, msgpack.UnpackException):
            return None

    def digest_for(self, node) -> Optional[str]:
        """The digest of a stored file's content when this cache learnt it before."""
        try:
            with open(self._side("refs", content_key(node)), "rb") as f:
                d = f.read().decode()
        except (OSError, UnicodeDecodeError):
            return None
        return d if is_digest(d) else None

    # -- where links were made (for `cache clear`) ------------------------------
    def log_links(self, path) -> None:
        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, "links"), "a", encoding="utf-8", errors="surrogateescape") as f:
            f.write(os.path.abspath(os.fsdecode(path)) + "\n")

    def count_links(self) -> int:
        """Live symlinks into this cache found at the places restores and clones wrote to."""
        try:
            with open(os.path.join(self.root, "links"), encoding="utf-8", errors="surrogateescape") as f:
                places = sorted(set(line.rstrip("\n") for line in f if line.strip()))
        except FileNotFoundError:
            return 0
        seen = set()
        n = 0

        def one(p):
            nonlocal n
            if p in seen:
                return
            seen.add(p)
            try:
                if (os.path.islink(p) and os.path.exists(p)          # dangling already: not counted
                        and self.digest_of_link_target(p, os.readlink(p))):
                    n += 1
            except OSError:
                pass
        for place in places:
            if os.path.isdir(place) and not os.path.islink(place):
                for d, dirs, files in os.walk(place):
                    for name in files + dirs:
                        one(os.path.join(d, name))
            else:
                one(place)
        return n

    # -- management -------------------------------------------------------------
    def size(self) -> dict:
        total, objects = 0, 0
        for d, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    st = os.lstat(os.path.join(d, name))
                except OSError:
                    continue
                total += st.st_blocks * 512
                if os.path.dirname(d) == self.objects:
                    objects += 1
        return {"path": self.root, "bytes": total, "objects": objects}

    def clear(self) -> dict:
        """Remove everything; returns how many restored links now dangle."""
        dangling = self.count_links()
        removed = 0
        if os.path.isdir(self.root):
            for name in os.listdir(self.root):
                p = os.path.join(self.root, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    for d, _dirs, files in os.walk(p):
                        removed += sum(1 for f in files if os.path.dirname(d) == self.objects)
                        os.chmod(d, 0o755)      # dirs/ trees are read-only (0555)
                    shutil.rmtree(p)
                else:
                    os.unlink(p)
        return {"path": self.root, "objects_removed": removed, "dangling_links": dangling}
