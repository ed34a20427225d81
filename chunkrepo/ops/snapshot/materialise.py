"""From the repository to the cache, and from the cache to user paths (restore, clone).

Every plan (a snapshot's manifest, a backup's tree) is checked before anything is written:
relative paths of safe components, each parent a directory of the same plan
(manifest.unsafe_path), else UnsafePath.  Directories are made with lstat checks, so a
placement never goes through a symlink, neither one the restore made nor one found in place
(a found symlink where the plan has a directory is a conflict).
"""

import concurrent.futures
import os
import shutil
import stat
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ...errors import ChunkrepoError, NotFound, TargetNotEmpty, UnsafePath
from ...model.nodes import DIR, REG, SYMLINK
from ..file_reader import ChunkFile
from ..traverse import split_path, walk
from . import manifest as mf
from .cache import LocalCache, is_digest
from .place import check_mode, hash_stream, is_placed, place, place_symlink, same_content
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
def file_dest(path, name: str) -> Tuple[str, bool]:
    """Where restore_at(path) puts a file snapshot called name, and whether path names the
    file itself (so its extension is checked): an existing directory, or a path ending in a
    separator (made if missing, as for cp), gets name appended."""
    _checked([(os.fsencode(name), mf.FILE)], f"file snapshot {name!r}")
    raw = os.fspath(path)
    dest = os.path.abspath(raw)
    if raw.endswith((os.sep, "/")):
        if os.path.lexists(dest) and not os.path.isdir(dest):
            raise NotADirectoryError(20, "not a directory (the path ends in a separator)", raw)
        return os.path.join(dest, name), False
    if os.path.isdir(dest):
        return os.path.join(dest, name), False
    return dest, True


def restore_file_at(repo, cache: LocalCache, loc: Located, dest: str, overwrite=None,
                    mode: str = "symlink", file_mode: int = 0o644) -> str:
    """The seed's FileSnapshot.restore_at semantics, dest already resolved (file_dest)."""
    check_mode(mode)
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


def _checked(entries, what: str) -> None:
    why = mf.unsafe_path(entries)
    if why is not None:
        raise UnsafePath(f"{what}: unsafe path {why}; nothing was restored")


def _plan_snapshot_dir(repo, loc: Located, sub: Optional[bytes] = None) -> List[Planned]:
    out = []
    parts = split_path(sub) if sub else []
    prefix = b"/".join(parts)
    listing = dir_listing(repo, loc)
    _checked(((e.path, e.type) for e, _ in listing), f"snapshot {loc.digest[:12]}")
    for e, node in listing:
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
    """Merge a planned (and checked) tree into target: extra files there are left alone.

    Directories it makes get the plan's modes once everything is in place."""
    check_overwrite(overwrite)
    check_mode(mode)
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
    dir_modes: list = []
    try:
        used = _place_entries(cache, plan, btarget, mode, download, kept, res, dir_modes)
    finally:       # the snapshot's modes on the directories it made, their own on those it opened
        for d, m in reversed(dir_modes):
            os.chmod(d, m)                     # children first: a 0555 parent is fine
    if used:
        res.mode = "+".join(sorted(used))      # what was done: a refused reflink is a copy
    cache.log_links(btarget)
    return res


def _place_entries(cache, plan, btarget: bytes, mode: str, download: bool, kept: set, res: PlaceResult,
                   dir_modes: list) -> set:
    """Place every entry of plan below btarget, in plan order (parents first); returns the
    modes used.  dir_modes gets (directory, mode to give it once everything is in place)."""
    used = set()
    for p in plan:
        dest = os.path.join(btarget, p.rel)
        if p.type == mf.DIR:
            made, mode_was = _make_dir(dest)
            if made or mode_was is not None:
                dir_modes.append((dest, p.mode if made else mode_was))
            res.dirs += 1
        elif p.rel in kept:
            res.files += p.type == mf.FILE
            res.symlinks += p.type == mf.LINK
        elif p.type == mf.LINK:
            place_symlink(p.target, dest)
            res.symlinks += 1
        else:
            used.add(place(cache.object_path(p.digest), dest, mode,
                           p.mode if mode in ("copy", "reflink") else 0o644))
            res.files += 1
            if not download and not cache.has(p.digest):
                res.dangling += 1
    return used


def _make_dir(path: bytes) -> Tuple[bool, Optional[int]]:
    """A real directory at path (never through or onto a symlink), writable for us while the
    tree is placed: (made now, the mode to give back to one that was there and was not)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, 0o700)
        return True, None
    if not stat.S_ISDIR(st.st_mode):
        raise FileExistsError(17, "not replacing what is already there with a directory", os.fsdecode(path))
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o700 == 0o700 or st.st_uid != os.geteuid():
        return False, None
    os.chmod(path, mode | 0o700)          # e.g. a 0555 directory of an earlier restore
    return False, mode


# -- restore_safe of a directory: CACHE/dirs/<digest> -------------------------------
READ_ONLY_DIR = 0o555


def _survey(root: bytes, plan: List[Planned], cache: LocalCache):
    """What the tree at root is against what restore_safe builds for plan: (exactly that,
    the paths in it restore_safe did not put there, its directories not 0555)."""
    want = {p.rel: p for p in plan}
    foreign: List[bytes] = []
    loose: List[bytes] = []
    matches = True
    found = 0
    stack = [(root, b"")]
    while stack:
        d, rel = stack.pop()
        if stat.S_IMODE(os.lstat(d).st_mode) != READ_ONLY_DIR:
            loose.append(d)
        with os.scandir(d) as it:
            entries = list(it)
        for e in entries:
            crel = rel + b"/" + e.name if rel else e.name
            p = want.get(crel)
            if p is not None and p.type == mf.DIR and e.is_dir(follow_symlinks=False):
                stack.append((e.path, crel))
            elif p is not None and e.is_symlink():      # ours (or a symlink: no data to lose)
                matches = matches and _is_our_link(e.path, p, cache)
            else:
                foreign.append(e.path)     # not in the snapshot, or a real file where a link was
                continue
            found += 1
    return matches and found == len(want), foreign, loose


def _is_our_link(path: bytes, p: Planned, cache: LocalCache) -> bool:
    if p.type == mf.LINK:
        return os.readlink(path) == p.target
    return (p.type == mf.FILE and os.readlink(path) == os.fsencode(cache.object_path(p.digest))
            and cache.has(p.digest, p.size))


def _writable_dirs(root: bytes) -> None:
    """Give the directories of a tree restore_safe built back u+w (to move or delete it)."""
    stack = [root]
    while stack:
        d = stack.pop()
        os.chmod(d, 0o755)
        with os.scandir(d) as it:
            stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))


def restore_dir_safe(repo, cache: LocalCache, loc: Located) -> str:
    """CACHE/dirs/<digest>: a read-only tree (directories 0555) of links into objects/.

    Checked against the manifest each time and rebuilt when it differs; a path in it that
    restore_safe did not put there (a file a pipeline wrote as root, or after a chmod) is
    never deleted: TargetNotEmpty names it, and nothing changes until it is moved away."""
    plan = _plan_snapshot_dir(repo, loc)
    dest = os.fsencode(cache.dir_path(loc.digest))
    materialise_many(repo, cache, [(p.digest, p.node) for p in plan if p.type == mf.FILE])
    if os.path.lexists(dest):
        if not os.path.isdir(dest) or os.path.islink(dest):
            matches, foreign, loose = False, [dest], []
        else:
            matches, foreign, loose = _survey(dest, plan, cache)
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise TargetNotEmpty(f"{os.fsdecode(dest)} holds what restore_safe() did not put there: "
                                 f"{', '.join(os.fsdecode(f) for f in foreign[:3])}{more}; not deleting it "
                                 f"(move it out of the read-only cache tree, which is then rebuilt)")
        if matches:
            for d in loose:
                os.chmod(d, READ_ONLY_DIR)
            return os.fsdecode(dest)
    work = os.fsencode(tempfile.mkdtemp(dir=cache.tmpdir(), prefix="dir-"))
    try:
        built = os.path.join(work, b"tree")
        os.mkdir(built)
        for p in plan:
            path = os.path.join(built, p.rel)
            if p.type == mf.DIR:
                os.mkdir(path)
            else:
                os.symlink(cache.object_path(p.digest) if p.type == mf.FILE else p.target, path)
        for p in reversed(plan):
            if p.type == mf.DIR:
                os.chmod(os.path.join(built, p.rel), READ_ONLY_DIR)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.lexists(dest):                  # an incomplete or stale copy, only our links
            _writable_dirs(dest)
            os.rename(dest, os.path.join(work, b"old"))
        os.rename(built, dest)
        os.chmod(dest, READ_ONLY_DIR)
    finally:
        if os.path.isdir(work):
            _writable_dirs(work)
            shutil.rmtree(work, ignore_errors=True)
    return os.fsdecode(dest)


# -- clone --------------------------------------------------------------------------
def _plan_backup(repo, cache: LocalCache, rec, start, download: bool) -> Tuple[List[Planned], int, int]:
    """The plan of a backup (or start inside it), and the objects (count, bytes) fetched into
    the cache to learn file digests the cache did not know."""
    parts = split_path(start or "/")
    out = []
    fetched = fetched_bytes = 0
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
                    fetched, fetched_bytes = fetched + 1, fetched_bytes + n.size
                else:
                    d = hash_stream(cf)
                cache.put_note(d, n)
            out.append(Planned(rel, mf.FILE, n.mode & 0o7777, n.size, d, n))
    _checked(((p.rel, p.type) for p in out), f"backup {rec.id}")
    return out, fetched, fetched_bytes


def clone(repo, source: str, dest, path=None, mode: str = "symlink", download: bool = True,
          cache: Optional[LocalCache] = None) -> PlaceResult:
    """Materialise a backup (or PATH inside it) or a snapshot as links into the cache at dest."""
    check_mode(mode)
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
            _checked([(plan[0].rel, mf.FILE)], f"snapshot {loc.digest[:12]}")
        res = place_tree(repo, cache, plan, dest, mode, download, overwrite=True, clone=True)
        res.digest, res.source = loc.digest, f"snapshot {loc.record.id}"
    else:
        plan, fetched, fetched_bytes = _plan_backup(repo, cache, rec, path, download)
        res = place_tree(repo, cache, plan, dest, mode, download, overwrite=True, clone=True)
        res.objects_written += fetched
        res.bytes_written += fetched_bytes
        res.source = f"backup {rec.id}"
    return res
