"""Restoring a backup (or a part of it) to an fsspec URL (s3://bucket/data, memory://x, ...).

Where things land is what ops.restore does for a local directory: start='/'
puts the whole backup below the target URL, any other start keeps only its
last component.  A URL backup's tree is its URL's directory, so restoring it
whole to the URL it came from puts every object back under its own name.

The target
    Without overwrite or mirror, a target that holds anything is refused
    (TargetNotEmpty) before anything is written.  With overwrite, objects of
    the backup replace those of the same name and nothing else is touched.
    With mirror, the target is first backed up as it is into the same
    repository (a "safety" backup, an ordinary URL backup whose id the result
    carries, and on_safety gets as soon as it is committed), then the backup
    is written and whatever the target held that the backup does not have,
    and the safety backup does, is deleted: restoring the safety backup with
    mirror undoes a mistaken mirror.  A safety backup that could not store
    every object stops the mirror before anything is written.  A target that
    holds the repository, or lies inside it (ops.url_place), is refused first.

What is written
    Regular files, streamed: the chunks come from the prefetch stream
    (ops.prefetch, bounded) and go to ``fs.open(path, "wb")`` in order, holes
    of sparse files as zeros; empty and one-chunk files are written whole by
    a few threads (``fs.pipe_file``: one PUT each on an object store).
    Memory stays at the prefetch budget, the write block and the few
    one-chunk files handed to the threads.  Directories are made (object stores have none:
    an empty directory does not survive there).  Symlinks, devices, FIFOs and
    sockets are skipped and counted (``skipped_special``): a filesystem URL
    holds names and bytes.  Modes, owners and times are not set.  A file
    whose content cannot be read completely is removed, never left partial.
"""

import concurrent.futures
import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from ..codec.hashing import ID_SIZE
from ..errors import ChunkrepoError, TargetNotEmpty
from ..model.nodes import DIR, REG
from .backup.fsspec_source import object_info, run_url_backup, same_version
from .backup.run import BackupOptions
from .file_reader import ChunkFile
from .fsspec_url import fs_errors, open_url
from .prefetch import prefetch
from .restore import RestoreResult, _safe_name
from .traverse import find_node, split_path, walk
from .url_place import below, place, repo_place, same_store

_WRITE_BLOCK = 8 << 20        # the filesystem's write buffer (an S3 part), at least 5 MiB
_ZEROS = bytes(1 << 20)
_PREFETCH_BUDGET = 16 << 20
_PROGRESS_EVERY = 0.2         # seconds between progress calls
_PUTTERS = 4                  # threads writing one-chunk files
_PUTS_AHEAD = 8               # one-chunk files handed to them and not yet written


@dataclass
class UrlRestoreResult(RestoreResult):
    """RestoreResult plus: objects deleted by mirror, special files skipped, the safety backup."""

    deleted: int = 0
    skipped_special: int = 0
    safety_backup: Optional[str] = None

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(deleted=self.deleted, skipped_special=self.skipped_special, safety_backup=self.safety_backup)
        return d


def _existing(fs, root: str, shown: str) -> Optional[dict]:
    """Everything below root (path -> info, root excluded); None when root does not exist."""
    try:
        info = fs.info(root)
    except FileNotFoundError:
        return None
    if info.get("type") != "directory":
        raise TargetNotEmpty(f"restore target {shown} exists and is not a directory")
    fs.invalidate_cache()         # the listing must be today's, not a cached one
    found = fs.find(root, withdirs=True, detail=True)
    return {p.rstrip("/"): i for p, i in found.items() if p.rstrip("/") != root}


def _abandon(fs, f, path: str, old: Optional[dict]) -> None:
    """A file whose writing failed: never leave a partial object.  An object store keeps
    the previous version (its upload is dropped); anything else at path is removed."""
    for step in (f.discard, f.close):
        try:
            step()
        except Exception:
            pass
    try:
        fs.invalidate_cache(path)
        now = fs.info(path)
    except FileNotFoundError:
        return
    if old is None or not same_version(object_info(now), object_info(old)):
        fs.rm(path)


class _Putter:
    """One-chunk files written by a few threads: on an object store each is one PUT, whose
    latency would add up on one thread.  At most _PUTS_AHEAD files (each at most the
    chunker's max_size) are handed over and not written; the first failure stops the restore."""

    def __init__(self, fs):
        self.fs = fs
        self.pool = concurrent.futures.ThreadPoolExecutor(_PUTTERS, "chunkrepo-put")
        self.slots = threading.BoundedSemaphore(_PUTS_AHEAD)
        self.written: list = []          # (path, size) of each file written (list.append: thread-safe)
        self.failure: Optional[BaseException] = None

    def put(self, dest: str, data: bytes) -> None:
        self.slots.acquire()
        if self.failure is not None:
            self.slots.release()
            raise self.failure
        self.pool.submit(self._put, dest, data)

    def _put(self, dest: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(dest, data)
            self.written.append((dest, len(data)))
        except BaseException as e:
            if self.failure is None:
                self.failure = e
        finally:
            self.slots.release()

    def close(self) -> None:
        """Wait for the writes; raise the first failure."""
        self.pool.shutdown(wait=True)
        if self.failure is not None:
            raise self.failure


class _UrlRestorer:
    def __init__(self, repo, root_tid: bytes, fs, root: str, start, before: Optional[dict], progress=None):
        self.repo, self.root_tid, self.fs, self.root = repo, root_tid, fs, root
        self.start = start
        self.progress = progress
        self.before = before or {}      # what the target held (path -> info)
        self.res = UrlRestoreResult()
        self.written: set = set()       # paths below root that the restore made (mirror keeps them)

    def run(self) -> None:
        parts = split_path(self.start)
        base = b"/".join(parts[:-1])
        base_len = len(base) + 1 if base else 0
        self.fs.makedirs(self.root, exist_ok=True)
        putter = _Putter(self.fs)
        try:
            self.walk(base_len, putter)
        finally:
            try:
                putter.close()
            finally:
                for dest, size in putter.written:
                    self.written.add(dest)
                    self.res.files += 1
                    self.res.bytes_written += size

    def walk(self, base_len: int, putter: _Putter) -> None:
        next_report = time.monotonic() + _PROGRESS_EVERY
        for (path, node, link_to), pf in prefetch(self.repo, walk(self.repo, self.root_tid, self.start),
                                                  budget=_PREFETCH_BUDGET):
            rel = path[base_len:]
            shown = "/" + path.decode("utf-8", "surrogateescape")
            if not all(_safe_name(c) for c in rel.split(b"/")):
                self.res.errors.append(f"{shown}: unsafe name in the backup's record: refused, not restored")
                self.res.skipped += 1
                continue
            dest = self.root + "/" + rel.decode("utf-8", "surrogateescape")
            if node.kind == DIR:
                self.fs.makedirs(dest, exist_ok=True)
                self.written.add(dest)
                self.res.dirs += 1
            elif node.kind == REG and node.sparse is None and len(node.chunks) <= ID_SIZE and (
                    pf is not None or not node.chunks):
                self.put_file(dest, node, shown, pf, putter)
            elif node.kind == REG:
                self.write_file(dest, node, shown, pf.data() if pf is not None else None)
            else:
                self.res.skipped_special += 1
            if self.progress is not None and time.monotonic() >= next_report:
                done = list(putter.written)
                self.progress(dataclasses.replace(self.res, files=self.res.files + len(done),
                                                  bytes_written=self.res.bytes_written + sum(n for _, n in done)))
                next_report = time.monotonic() + _PROGRESS_EVERY

    def put_file(self, dest: str, node, shown: str, pf, putter: _Putter) -> None:
        """An empty or one-chunk file: its data whole, handed to the putter."""
        try:
            data = next(pf.data()) if pf is not None else b""
            if len(data) != node.size:
                raise ChunkrepoError(f"stored content has {len(data)} bytes, expected {node.size}")
        except ChunkrepoError as e:     # nothing was written: whatever the target had stays
            self.res.errors.append(f"{shown}: {e}; the file was not restored")
            self.res.skipped += 1
            return
        putter.put(dest, data)

    def write_file(self, dest: str, node, shown: str, chunks) -> None:
        f = self.fs.open(dest, "wb", block_size=_WRITE_BLOCK)
        pos = 0
        try:
            cf = ChunkFile(self.repo, node, shown.encode("utf-8", "surrogateescape"))
            for off, data in cf.iter_data(chunks):
                pos = _zeros(f, pos, off)
                f.write(data)
                pos += len(data)
            pos = _zeros(f, pos, node.size)
            if pos != node.size:
                raise ChunkrepoError(f"stored content has {pos} bytes, expected {node.size}")
        except ChunkrepoError as e:
            _abandon(self.fs, f, dest, self.before.get(dest))
            msg = str(e)
            self.res.errors.append(f"{msg if msg.startswith(shown) else f'{shown}: {msg}'}; "
                                   "the file was not restored")
            self.res.skipped += 1
            return
        except BaseException:
            _abandon(self.fs, f, dest, self.before.get(dest))
            raise
        f.close()
        self.written.add(dest)
        self.res.files += 1
        self.res.bytes_written += pos

    def delete_extras(self, before: dict, safe: set, shown: str) -> None:
        """Mirror: remove what the target held and the restore did not write (files first),
        if the safety backup holds it (paths relative to root); anything else is reported
        and left (it appeared after the safety backup, or the backup could not hold it)."""
        cut = len(self.root) + 1
        extras = [p for p in before if p not in self.written]
        files, dirs = [], []
        for p in extras:
            is_dir = before[p].get("type") == "directory"
            if p[cut:] in safe:
                (dirs if is_dir else files).append(p)
            elif not is_dir:
                self.res.errors.append(f"{shown}/{p[cut:]}: not in the safety backup: not deleted")
        if files:
            self.fs.rm(files)
        for d in sorted(dirs, reverse=True):   # deepest first, never recursively: only what is empty goes
            try:
                self.fs.rmdir(d)
            except Exception:    # gone with its files (object stores), or not empty
                pass
        self.res.deleted = len(files)


def _zeros(f, pos: int, upto: int) -> int:
    while pos < upto:
        n = min(upto - pos, len(_ZEROS))
        f.write(_ZEROS[:n])
        pos += n
    return pos


def _refuse_own_repo(repo, url: str, options: dict, shown: str) -> None:
    """A target holding the repository, or inside it, would have it overwritten or
    (mirror) deleted with the safety backup in it: refused before anything is done."""
    mine, there = repo_place(repo), place(url, options)
    same = same_store(mine, there)
    if same is False:
        return
    if below(mine.path, there.path) is not None or below(there.path, mine.path) is not None:
        unsure = "" if same else " (their S3 endpoints could not be told apart)"
        raise ChunkrepoError(f"restore target {shown} holds the repository {repo.path} or lies inside it"
                             f"{unsure}: refused, nothing was written")


def _safety_backup(repo, url: str, options: dict, fs, shown: str, on_safety) -> Tuple[str, set]:
    """Back up the target as it is: (its id, the paths it holds relative to the target's
    root: those alone a mirror may delete)."""
    safety = run_url_backup(repo, url, BackupOptions(), options, fs=fs)
    if on_safety is not None:
        on_safety(safety.id)
    if safety.skipped or safety.files_changed_during_backup:
        raise ChunkrepoError(
            f"the safety backup {safety.id} of {shown} could not store every object "
            f"({safety.skipped + safety.files_changed_during_backup}): nothing was mirrored")
    root_tid = bytes.fromhex(repo.resolve_backup(safety.id).root)
    return safety.id, {path.decode("utf-8", "surrogateescape") for path, _, _ in walk(repo, root_tid, "/")}


def restore_to_url(repo, root_tid: bytes, url: str, start="/", options: Optional[dict] = None,
                   mirror: bool = False, overwrite: bool = False, fs=None,
                   progress: Optional[Callable[[RestoreResult], None]] = None,
                   on_safety: Optional[Callable[[str], None]] = None) -> UrlRestoreResult:
    """Write the backup whose root record is root_tid (or start below it) to the fsspec URL.

    See the module docstring.  Raises NotFound (start not in the backup),
    TargetNotEmpty, and ChunkrepoError when the target holds the repository or
    the filesystem fails.  options go to the filesystem; fs, if given, is used
    instead of opening one; progress is called as ops.restore calls it;
    on_safety(id) as soon as a mirror's safety backup is committed, before the
    target is changed.
    """
    t0 = time.monotonic()
    options = options or {}
    opened, root, shown = open_url(url, options)
    _refuse_own_repo(repo, url, options, shown)
    fs = fs or opened
    find_node(repo, root_tid, start)          # NotFound before touching the target
    with fs_errors(shown):
        before = _existing(fs, root, shown)
    safety, safe = None, set()
    if before and mirror:
        safety, safe = _safety_backup(repo, url, options, fs, shown, on_safety)
    elif before and not overwrite:
        raise TargetNotEmpty(f"restore target {shown} is not empty (use --overwrite or --mirror)")
    job = _UrlRestorer(repo, root_tid, fs, root, start, before, progress)
    job.res.safety_backup = safety
    with fs_errors(shown):
        job.run()
        if mirror and before:
            job.delete_extras(before, safe, shown)
    job.res.elapsed = time.monotonic() - t0
    if progress is not None:
        progress(job.res)
    return job.res
