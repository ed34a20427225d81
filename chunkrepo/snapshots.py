"""FileSnapshot, DirectorySnapshot and restore(digest): files and datasets by BLAKE3 digest.

    from chunkrepo import FileSnapshot, DirectorySnapshot, restore

    snap = FileSnapshot.snap("model.pt")          # stored in the repository; snap.digest == b3sum
    FileSnapshot.from_digest(snap.digest).restore_safe()   # read-only path in the local cache

    ds = DirectorySnapshot.snap("datasets/cool")  # ds.digest names a stored manifest
    DirectorySnapshot.from_digest(ds.digest).restore_safe()  # anywhere with the same repository

The repository is the `repo` argument (a path or an open Repo), else $CHUNKREPO_REPO, else the
default repository (created on the first snap()).  A snapshot object made with a repo argument
keeps using that repository: the open Repo while it is open, else its path and storage options.
The local cache is $CHUNKREPO_CACHE_DIR, else ~/.cache/chunkrepo, resolved at each call.
Semantics: docs/snapshots.md.
"""

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, List, Optional, Union

from . import paths
from .api import Repo
from .ops.snapshot import materialise as mat
from .ops.snapshot import store
from .ops.snapshot.cache import LocalCache

__all__ = ["FileSnapshot", "DirectorySnapshot", "restore"]


class _RepoRef:
    """The repository a snapshot object was made with: the open Repo it was given, used while
    that is open, else reopened by path with the same storage options (a copy or a pickle of
    the object keeps only those)."""

    def __init__(self, repo: Repo, given_open: bool):
        self.path = repo.path
        self.options = repo.storage_options
        self.live = repo if given_open else None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, live=None)

    def __repr__(self) -> str:
        return f"_RepoRef({self.path!r})"


def _ref(r: Repo, repo) -> Optional[_RepoRef]:
    """What a snapshot object made through r (opened for the argument repo) keeps."""
    if repo is None:
        return None        # $CHUNKREPO_REPO or the default, resolved at each call
    return _RepoRef(r, isinstance(repo, Repo))


@contextmanager
def _open(repo=None, create: bool = False):
    if isinstance(repo, _RepoRef) and repo.live is not None and not repo.live.closed:
        repo = repo.live
    if isinstance(repo, Repo):
        yield repo
        return
    if isinstance(repo, _RepoRef):
        r = Repo(repo.path, storage_options=repo.options)
    else:
        path = paths.repo_path(repo)
        if (create and repo is None and not os.environ.get(paths.REPO_ENV)
                and not os.path.exists(os.path.join(path, "config"))):
            Repo.init(path).close()     # the default repository, made on first use (as `chunkrepo backup` does)
        r = Repo(path)
    try:
        yield r
    finally:
        r.close()


def _existing(path) -> None:
    """FileNotFoundError naming path as given, before anything is opened or created."""
    if not os.path.lexists(path):
        raise FileNotFoundError(2, "No such file or directory", os.fsdecode(os.fspath(path)))


def _locate(repo, digest: str, want: Optional[str] = None):
    loc = store.locate(repo.repository, digest)
    if want is not None and loc.type != want:
        other = "DirectorySnapshot" if loc.type == "dir" else "FileSnapshot"
        raise ValueError(f"{digest} is a {'directory' if loc.type == 'dir' else 'file'} snapshot; "
                         f"use {other}")
    return loc


def _time(ns: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.timezone.utc)


@dataclass
class FileSnapshot:
    """A file's content at a point in time, named by the BLAKE3 digest of its bytes."""

    relpath: Optional[Path]
    name: str
    digest: str
    time: datetime.datetime
    content_length: int
    _repo: Optional[_RepoRef] = field(default=None, repr=False, compare=False)

    # -- making and finding ---------------------------------------------------
    @classmethod
    def snap(cls, path: Union[Path, str], workspace_dir=None, repo=None, wait: float = 0) -> "FileSnapshot":
        """Store the file at path in the repository (chunked, deduplicated) and record its digest.

        relpath is path relative to workspace_dir, else to the nearest directory with a
        pyproject.toml, else to the git root; None outside it.  Threads of this process take
        turns; while another process writes the repository, RepoLocked unless it is done
        within wait seconds."""
        _existing(path)
        if os.path.isdir(path) and not os.path.islink(path):
            raise IsADirectoryError(21, "is a directory (use DirectorySnapshot.snap)", os.fspath(path))
        with _open(repo, create=True) as r:
            res = store.take_snapshot(r.repository, path, workspace_dir, wait=wait)
            ref = _ref(r, repo)
        return cls(Path(res.relpath) if res.relpath is not None else None, res.name, res.digest,
                   _time(res.time_ns), res.content_length, _repo=ref)

    @classmethod
    def from_digest(cls, digest: str, repo=None) -> "FileSnapshot":
        """The snapshot with this digest (any file of any snapshot); FileNotFoundError if unknown."""
        with _open(repo) as r:
            loc = _locate(r, digest, "file")
            ref = _ref(r, repo)
        return cls._from_located(loc, ref)

    @classmethod
    def _from_located(cls, loc, repo_ref) -> "FileSnapshot":
        info = loc.record.snapshot or {}
        top = os.fsencode(info.get("tree_path", ""))
        rel = info.get("relpath")
        if loc.path != top and rel is not None:        # a file inside a directory snapshot
            rel = os.path.join(rel, os.fsdecode(loc.path[len(top) + 1:]))
        elif loc.path != top:
            rel = None
        return cls(Path(rel) if rel is not None else None, os.fsdecode(os.path.basename(loc.path)),
                   loc.digest, _time(info.get("time_ns", loc.record.start_ns)), loc.node.size,
                   _repo=repo_ref)

    # -- properties -----------------------------------------------------------
    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def has_local_cache(self) -> bool:
        return LocalCache().has(self.digest, self.content_length)

    @property
    def local_cache_path(self) -> Path:
        return Path(LocalCache().object_path(self.digest))

    # -- reading --------------------------------------------------------------
    def download(self) -> Path:
        """Materialise the content in the local cache (once); returns the read-only object."""
        cache = LocalCache()
        if not cache.has(self.digest, self.content_length):
            with _open(self._repo) as r:
                loc = _locate(r, self.digest, "file")
                mat.materialise_file(r.repository, cache, self.digest, loc.node)
        return Path(cache.object_path(self.digest))

    def open(self) -> IO[bytes]:
        """The content, read-only."""
        return open(self.download(), "rb")

    def restore_safe(self) -> Path:
        """The read-only cache path of the content; writes nothing outside the cache."""
        return self.download()

    # -- restoring ------------------------------------------------------------
    def restore_at(self, path: Union[Path, str], overwrite: Optional[bool] = None,
                   mode: str = "symlink") -> Path:
        """Restore at path (a directory, or a path ending in '/', gets the file's name appended).

        A different extension than the snapshot's is a ValueError.  An existing file:
        overwrite=None warns and replaces, False raises FileExistsError, True replaces.
        The result is a symlink to the read-only cache object (mode='hardlink', 'reflink' or
        'copy' where a symlink does not suit)."""
        mat.check_overwrite(overwrite)
        dest, named = mat.file_dest(path, self.name)
        p = Path(dest)
        if named and p.suffix != self.suffix:
            raise ValueError(f"{p} has extension {p.suffix!r} but the snapshot {self.name} has "
                             f"{self.suffix!r}; restoring it there is likely a mistake")
        with _open(self._repo) as r:
            loc = _locate(r, self.digest, "file")
            out = mat.restore_file_at(r.repository, LocalCache(), loc, os.fspath(p), overwrite, mode)
        return Path(out)

    def restore(self, overwrite: Optional[bool] = None, project_path=None, mode: str = "symlink") -> Path:
        """Restore to the original location: relpath inside project_path (default: the workspace
        of the current directory)."""
        mat.check_overwrite(overwrite)
        if self.relpath is None:
            raise ValueError(f"snapshot {self.name} was taken outside a workspace: it has no relpath; "
                             f"use restore_at(path)")
        ws = project_path if project_path is not None else store.find_workspace(os.getcwd())
        if ws is None:
            raise ValueError("no workspace here (no pyproject.toml or git root); pass project_path")
        return self.restore_at(Path(ws) / self.relpath, overwrite, mode)


@dataclass
class DirectorySnapshot:
    """A directory's names, types, modes and file contents, named by the digest of its manifest."""

    original_path: Path
    relpath: Optional[Path]
    files: List[FileSnapshot]
    digest: str
    _repo: Optional[_RepoRef] = field(default=None, repr=False, compare=False)

    @classmethod
    def snap(cls, path: Union[Path, str], workspace_dir=None, repo=None,
             wait: float = 0) -> "DirectorySnapshot":
        """Store the directory at path (without the repository or the local cache, should it
        hold them); wait as for FileSnapshot.snap."""
        _existing(path)
        if not os.path.isdir(path):
            raise NotADirectoryError(20, "not a directory (use FileSnapshot.snap)", os.fspath(path))
        with _open(repo, create=True) as r:
            res = store.take_snapshot(r.repository, path, workspace_dir, wait=wait)
            ref = _ref(r, repo)
        t = _time(res.time_ns)
        files = [FileSnapshot(Path(res.relpath) / rel if res.relpath is not None else None,
                              os.path.basename(rel), d, t, size, _repo=ref) for rel, d, size in res.files]
        return cls(Path(res.original_path), Path(res.relpath) if res.relpath is not None else None,
                   files, res.digest, _repo=ref)

    @classmethod
    def from_digest(cls, digest: str, repo=None) -> "DirectorySnapshot":
        with _open(repo) as r:
            loc = _locate(r, digest, "dir")
            listing = store.dir_listing(r.repository, loc)
            ref = _ref(r, repo)
        info = loc.record.snapshot or {}
        rel = info.get("relpath")
        t = _time(info.get("time_ns", loc.record.start_ns))
        files = [FileSnapshot(Path(rel) / os.fsdecode(e.path) if rel is not None else None,
                              os.fsdecode(os.path.basename(e.path)), e.digest, t, e.size, _repo=ref)
                 for e, _node in listing if e.type == "f"]
        return cls(Path(info.get("original_path", "")), Path(rel) if rel is not None else None, files,
                   loc.digest, _repo=ref)

    def restore_safe(self) -> Path:
        """A tree of links into the read-only cache (CACHE/dirs/<digest>), built once and
        checked against the manifest each time."""
        with _open(self._repo) as r:
            loc = _locate(r, self.digest, "dir")
            return Path(mat.restore_dir_safe(r.repository, LocalCache(), loc))

    def restore_at(self, path: Union[Path, str], overwrite=True, mode: str = "symlink") -> Path:
        """Merge the directory into path (extra files there are left alone); returns path."""
        with _open(self._repo) as r:
            loc = _locate(r, self.digest, "dir")
            plan = mat._plan_snapshot_dir(r.repository, loc)
            mat.place_tree(r.repository, LocalCache(), plan, path, mode, True, overwrite)
        return Path(os.path.abspath(os.fspath(path)))

    def restore(self, workspace_dir=None, overwrite=True, mode: str = "symlink") -> Path:
        if self.relpath is None:
            raise ValueError("this directory was snapshotted outside a workspace: it has no relpath; "
                             "use restore_at(path)")
        ws = workspace_dir if workspace_dir is not None else store.find_workspace(os.getcwd())
        if ws is None:
            raise ValueError("no workspace here (no pyproject.toml or git root); pass workspace_dir")
        return self.restore_at(Path(ws) / self.relpath, overwrite, mode)


def restore(digest: str, repo=None) -> Path:
    """Pull the content with this digest into the local cache; returns its read-only path
    (a file, or a tree of links for a directory).  FileNotFoundError if not a known digest."""
    with _open(repo) as r:
        loc = store.locate(r.repository, digest)
        if loc.type == "dir":
            return Path(mat.restore_dir_safe(r.repository, LocalCache(), loc))
        cache = LocalCache()
        return Path(mat.materialise_file(r.repository, cache, loc.digest, loc.node))
