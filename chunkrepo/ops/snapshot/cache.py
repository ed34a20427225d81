"""The local, read-only, content-addressed cache of snapshot content.

    CACHE/objects/ab/<digest>   a file's whole content, named by its BLAKE3 (b3sum) digest, mode 0444
    CACHE/notes/ab/<digest>     msgpack [size, chunk ids, sparse]: how the repository stores that content
    CACHE/refs/ab/<key>         the digest of a stored file known by its chunk list (clones of backups)
    CACHE/dirs/<digest>/        restore_safe() of a directory snapshot: a tree of links into objects/
    CACHE/links                 one absolute path per line: where restores and clones put links
    CACHE/tmp/                  work files (same filesystem as objects/, so rename is atomic)

The cache location is resolved at call time (paths.cache_dir(): $CHUNKREPO_CACHE_DIR or the
user's cache dir).  An object is written to tmp/, verified against its digest while written,
fsync'ed, made read-only and renamed into place: a reader never sees a partial object, and an
existing object is never rewritten.
"""

import os
import shutil
import stat
import tempfile
from typing import Iterator, Optional

import msgpack

from ... import paths
from ...codec.hashing import new_hasher
from ...errors import IntegrityError

_READ_BLOCK = 4 << 20
HEX = frozenset("0123456789abcdef")


def is_digest(s) -> bool:
    return isinstance(s, str) and len(s) == 64 and set(s) <= HEX


def content_key(node) -> str:
    """A key for a stored file's content from its chunk list (no data read)."""
    h = new_hasher()
    h.update(b"chunkrepo-content\0")
    h.update(msgpack.packb([node.size, node.chunks, node.sparse], use_bin_type=True))
    return h.hexdigest()


class LocalCache:
    def __init__(self, root: Optional[str] = None):
        self.root = os.path.abspath(root) if root else paths.cache_dir()

    # -- names ----------------------------------------------------------------
    @property
    def objects(self) -> str:
        return os.path.join(self.root, "objects")

    def object_path(self, digest: str) -> str:
        return os.path.join(self.root, "objects", digest[:2], digest)

    def dir_path(self, digest: str) -> str:
        return os.path.join(self.root, "dirs", digest)

    def _side(self, kind: str, key: str) -> str:
        return os.path.join(self.root, kind, key[:2], key)

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
        try:
            st = os.stat(self.object_path(digest))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and (size is None or st.st_size == size)

    def put_stream(self, digest: Optional[str], source: Iterator[bytes], size: int) -> str:
        """Write the bytes of source as the object digest (None: named by what is read).

        Verified while written; returns the digest.  An existing object is kept."""
        tmp = tempfile.NamedTemporaryFile(dir=self.tmpdir(), prefix="obj-", delete=False)
        try:
            h = new_hasher()
            n = 0
            with tmp:
                for data in source:
                    h.update(data)
                    tmp.write(data)
                    n += len(data)
                tmp.flush()
                os.fsync(tmp.fileno())
                os.fchmod(tmp.fileno(), 0o444)
            got = h.hexdigest()
            if n != size or (digest is not None and got != digest):
                raise IntegrityError(f"content for {digest or got} does not match: "
                                     f"{n} bytes with digest {got}")
            dest = self.object_path(got)
            if not self.has(got, size):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.rename(tmp.name, dest)   # no fsync of the directory: a lost rename is fetched again
            return got
        finally:
            if os.path.exists(tmp.name):
                os.unlink(tmp.name)

    def put_file(self, chunk_file, digest: Optional[str], size: int) -> str:
        """Materialise a stored file (a ChunkFile) as an object."""
        def blocks():
            while True:
                b = chunk_file.read(_READ_BLOCK)
                if not b:
                    return
                yield b
        return self.put_stream(digest, blocks(), size)

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
