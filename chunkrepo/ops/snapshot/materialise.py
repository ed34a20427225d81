"""From the repository to the cache, and from the cache to user paths (restore, clone)."""

import concurrent.futures
import os
import shutil
import stat
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import List, Optional

from ...errors import ChunkrepoError, NotFound
from ...model.nodes import DIR, REG, SYMLINK
from ..file_reader import ChunkFile
from ..traverse import split_path, walk
from . import manifest as mf
from .cache import LocalCache, is_digest
from .place import is_placed, place, place_symlink, same_content
from .store import Located, dir_listing, locate

_WORKERS = 3


def materialise_file(repo, cache: LocalCache, digest: str, node) -> str:
    """The cache object of a stored file, written (and verified) once."""
    if not cache.has(digest, node.size):
        cache.put_file(ChunkFile(repo, node, digest.encode()), digest, node.size)
    return cache.object_path(digest)


def materialise_many(repo, cache: LocalCache, items) -> tuple:
    """Materialise (digest, node) pairs missing from the cache, a few at a time (reads, blake3,
    zstd, writes and fsync release the GIL); returns (objects written, bytes)."""
    todo, seen = [], set()
    for d, node in items:
        if d not in seen and not cache.has(d, node.size):
            seen.add(d)
            todo.append((d, node))
    if len(todo) > 1:
        with concurrent.futures.ThreadPoolExecutor(_WORKERS, "chunkrepo-cache") as pool:
            for f in [pool.submit(materialise_file, repo, cache, d, n) for d, n in todo]:
                f.result()
    elif todo:
        materialise_file(repo, cache, *todo[0])
    return len(todo), sum(n.size for _, n in todo)


def check_overwrite(overwrite) -> None:
    if overwrite is not None and not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be None, True or False, not {overwrite!r}")


# -- one file ---------------------------------------------------------------------
def restore_file_at(repo, cache: LocalCache, loc: Located, dest: str, overwrite=None,
                    mode: str = "symlink", file_mode: int = 0o644) -> str:
    """The seed's FileSnapshot.restore_at semantics, dest already resolved (name appended)."""
    obj = cache.object_path(loc.digest)
    if is_placed(dest, obj, mode):
        return dest                       # restoring onto its own link: nothing to do
    if os.path.lexists(dest):
        if os.path.isdir(dest) and not os.path.islink(dest):
            raise IsADirectoryError(21, "is a directory; not replacing it with a file", dest)
        if overwrite is False:
            raise FileExistsError(17, "file exists (pass overwrite=True to replace it)", dest)
        if overwrite is None:
            warnings.warn(f"file {dest} already exists, replacing with a "
                          f"{'symlink' if mode == 'symlink' else mode} to snapshot {loc.digest[:12]}",
                          stacklevel=3)
    materialise_file(repo, cache, loc.digest, loc.node)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    place(obj, dest, mode, file_mode)
    cache.log_links(dest)
    return dest


# -- a directory ------------------------------------------------------------------
@dataclass
class Planned:
    rel: bytes
    type: str                 # manifest type: d, f, l
    mode: int
    size: int
    digest: str = ""
    node: object = None
    target: bytes = b""


def _plan_snapshot_dir(repo, loc: Located, sub: Optional[bytes] = None) -> List[Planned]:
    out = []
    parts = split_path(sub) if sub else []
    prefix = b"/".join(parts)
    for e, node in dir_listing(repo, loc):
        rel = e.path
        if prefix:
            if rel == prefix:
                if e.type != mf.DIR:
                    rel = os.path.basename(prefix)
                else:
                    continue
            elif rel.startswith(prefix + b"/"):
                rel = rel[len(prefix) + 1:]
            else:
                continue
        out.append(Planned(rel, e.type, e.mode, e.size, e.digest, node,
                           e.ref if e.type == mf.LINK else b""))
    if prefix and not out:
        raise NotFound(f"{os.fsdecode(sub)}: not in snapshot {loc.digest}")
    return out


def _conflicts(target: bytes, plan: List[Planned], cache: LocalCache, mode: str, clone: bool):
    """(to replace, conflicts, already in place) before anything is written."""
    replace, conflicts, kept = [], [], set()
    for p in plan:
        dest = os.path.join(target, p.rel)
        try:
            lst = os.lstat(dest)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            conflicts.append(dest)
            continue
        if p.type == mf.DIR:
            if not stat.S_ISDIR(lst.st_mode):
                conflicts.append(dest)
            continue
        if stat.S_ISDIR(lst.st_mode):
            conflicts.append(dest)
            continue
        if p.type == mf.LINK:
            if stat.S_ISLNK(lst.st_mode) and os.readlink(dest) == p.target:
                kept.add(p.rel)
            else:
                replace.append(dest)
            continue
        obj = cache.object_path(p.digest)
        if is_placed(dest, obj, mode):
            kept.add(p.rel)
        elif stat.S_ISLNK(lst.st_mode) and cache.digest_of_link_target(dest, os.readlink(dest)):
            replace.append(dest)         # a link into the cache: ours to replace (re-clone)
        elif clone and stat.S_ISREG(lst.st_mode) and same_content(dest, p.digest, p.size):
            kept.add(p.rel)
        else:
            replace.append(dest)
    return replace, conflicts, kept


@dataclass
class PlaceResult:
    path: str = ""
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    kept: int = 0
    replaced: int = 0
    dangling: int = 0
    objects_written: int = 0
    bytes_written: int = 0
    mode: str = "symlink"
    digest: str = ""
    source: str = ""
    errors: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def place_tree(repo, cache: LocalCache, plan: List[Planned], target, mode: str = "symlink",
               download: bool = True, overwrite=True, clone: bool = False) -> PlaceResult:
    """Merge a planned tree into target: extra files there are left alone."""
    check_overwrite(overwrite)
    btarget = os.fsencode(os.path.abspath(os.fspath(target)))
    if os.path.lexists(btarget) and not os.path.isdir(btarget):
        raise FileExistsError(17, "exists and is not a directory", os.fsdecode(btarget))
    if not download and mode != "symlink":
        raise ChunkrepoError(f"--no-download makes symlinks only (a {mode} needs the content)")
    replace, conflicts, kept = _conflicts(btarget, plan, cache, mode, clone)
    if clone:
        conflicts += [r for r in replace if not os.path.islink(r)]   # real files are never replaced
        replace = [r for r in replace if os.path.islink(r)]
    if conflicts:
        shown = ", ".join(os.fsdecode(c) for c in conflicts[:3])
        more = f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
        why = "" if clone else (" (a file where the snapshot has a directory, or the reverse: "
                                "overwrite never replaces those; remove them first)")
        raise FileExistsError(17, f"not replacing what is already there: {shown}{more}{why}",
                              os.fsdecode(btarget))
    if replace and overwrite is False:
        raise FileExistsError(17, f"{len(replace)} paths already exist, e.g. {os.fsdecode(replace[0])} "
                                  f"(pass overwrite=True to replace them)", os.fsdecode(btarget))
    if replace and overwrite is None:
        warnings.warn(f"{len(replace)} existing paths below {os.fsdecode(btarget)} are replaced, "
                      f"e.g. {os.fsdecode(replace[0])}", stacklevel=3)
    res = PlaceResult(path=os.fsdecode(btarget), mode=mode, kept=len(kept), replaced=len(replace))
    if download:
        res.objects_written, res.bytes_written = materialise_many(
            repo, cache, [(p.digest, p.node) for p in plan if p.type == mf.FILE])
    os.makedirs(btarget, exist_ok=True)
    created_dirs = []
    for p in plan:
        dest = os.path.join(btarget, p.rel)
        if p.type == mf.DIR:
            if not os.path.isdir(dest):
                os.makedirs(dest)
                created_dirs.append((dest, p.mode))
            res.dirs += 1
            continue
        parent = os.path.dirname(dest)
        if not os.path.isdir(parent):
            os.makedirs(parent)
        if p.rel in kept:
            res.files += p.type == mf.FILE
            res.symlinks += p.type == mf.LINK
            continue
        if p.type == mf.LINK:
            place_symlink(p.target, dest)
            res.symlinks += 1
            continue
        obj = cache.object_path(p.digest)
        res.mode = place(obj, dest, mode, p.mode if mode in ("copy", "reflink") else 0o644)
        res.files += 1
        if not download and not cache.has(p.digest):
            res.dangling += 1
    for d, m in reversed(created_dirs):
        os.chmod(d, m | 0o700)        # keep them writable for the owner: a clone is edited
    cache.log_links(btarget)
    return res


# -- restore_safe of a directory: CACHE/dirs/<digest> -------------------------------
def _tree_matches(root: str, plan: List[Planned], cache: LocalCache) -> bool:
    want = {}
    for p in plan:
        if p.type == mf.FILE:
            want[os.fsdecode(p.rel)] = ("l", cache.object_path(p.digest), p.digest, p.size)
        elif p.type == mf.LINK:
            want[os.fsdecode(p.rel)] = ("l", os.fsdecode(p.target), None, None)
        else:
            want[os.fsdecode(p.rel)] = ("d", None, None, None)
    have = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(d, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                have[rel] = ("l", os.readlink(full))
            elif os.path.isdir(full):
                have[rel] = ("d", None)
            else:
                return False
    if set(have) != set(want):
        return False
    for rel, (t, target, digest, size) in want.items():
        if have[rel] != (t, target):
            return False
        if digest is not None and not cache.has(digest, size):
            return False
    return True


def restore_dir_safe(repo, cache: LocalCache, loc: Located) -> str:
    plan = _plan_snapshot_dir(repo, loc)
    dest = cache.dir_path(loc.digest)
    materialise_many(repo, cache, [(p.digest, p.node) for p in plan if p.type == mf.FILE])
    if os.path.isdir(dest) and _tree_matches(dest, plan, cache):
        return dest
    work = tempfile.mkdtemp(dir=cache.tmpdir(), prefix="dir-")
    try:
        built = os.path.join(work, "tree")
        os.mkdir(built)
        for p in plan:
            path = os.path.join(os.fsencode(built), p.rel)
            if p.type == mf.DIR:
                os.makedirs(path, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(cache.object_path(p.digest) if p.type == mf.FILE else p.target, path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.lexists(dest):
            os.rename(dest, os.path.join(work, "old"))      # an incomplete or tampered copy
        os.rename(built, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


# -- clone --------------------------------------------------------------------------
def _plan_backup(repo, cache: LocalCache, rec, start, download: bool) -> List[Planned]:
    parts = split_path(start or "/")
    out = []
    for e in walk(repo, bytes.fromhex(rec.root), start or "/", include_start=bool(parts)):
        if parts:
            rest = e.path.split(b"/")[len(parts):]
            rel = b"/".join([parts[-1]] + rest)
        else:
            rel = e.path
        n = e.node
        if n.kind == DIR:
            out.append(Planned(rel, mf.DIR, n.mode & 0o7777, 0))
        elif n.kind == SYMLINK:
            out.append(Planned(rel, mf.LINK, 0, 0, target=n.target))
        elif n.kind == REG:
            d = cache.digest_for(n)
            if d is None:
                cf = ChunkFile(repo, n, e.path)
                if download:
                    d = cache.put_file(cf, None, n.size)
                else:
                    from ...codec.hashing import new_hasher
                    h = new_hasher()
                    while True:
                        b = cf.read(4 << 20)
                        if not b:
                            break
                        h.update(b)
                    d = h.hexdigest()
                cache.put_note(d, n)
            out.append(Planned(rel, mf.FILE, n.mode & 0o7777, n.size, d, n))
    return out


def clone(repo, source: str, dest, path=None, mode: str = "symlink", download: bool = True,
          cache: Optional[LocalCache] = None) -> PlaceResult:
    """Materialise a backup (or PATH inside it) or a snapshot as links into the cache at dest."""
    cache = cache or LocalCache()
    rec = None
    loc = None
    if not is_digest(source.lower()):
        try:
            rec = repo.resolve_backup(source)
        except NotFound:
            rec = None
    if rec is not None and rec.kind == "snapshot" and rec.snapshot and not path:
        loc = locate(repo, rec.snapshot["digest"])
    elif rec is None:
        try:
            loc = locate(repo, source)
        except FileNotFoundError:
            raise NotFound(f"no backup or snapshot {source!r} in the repository") from None
    if loc is not None:
        if loc.type == "dir":
            plan = _plan_snapshot_dir(repo, loc, path)
        else:
            if path:
                raise ChunkrepoError(f"{source} is a file snapshot: no PATH inside it")
            plan = [Planned(os.path.basename(loc.path), mf.FILE, 0o644, loc.node.size, loc.digest, loc.node)]
        res = place_tree(repo, cache, plan, dest, mode, download, overwrite=True, clone=True)
        res.digest, res.source = loc.digest, f"snapshot {loc.record.id}"
    else:
        plan = _plan_backup(repo, cache, rec, path, download)
        res = place_tree(repo, cache, plan, dest, mode, download, overwrite=True, clone=True)
        res.source = f"backup {rec.id}"
    return res
