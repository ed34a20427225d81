"""Repo: the Python API.

    from chunkrepo import Repo
    with Repo.init("/srv/backups") as repo:
        result = repo.backup(["/etc"])
        for entry in repo.list_backup(result.id, "/etc"):
            ...
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence

from .errors import ChunkrepoError, NotFound
from .model import BackupRecord
from .model.nodes import REG
from .ops.fsspec_url import is_url
from .ops.traverse import Entry, find_node, walk
from .repository import Repository
from .repository.config import Config
from .storage.faults import from_env as faults_from_env

# The operations are imported where they are used: a short command (ls, list-backups)
# then does not pay for importing backup, check, prune, copy, diff, restore and tar.
if TYPE_CHECKING:
    from .ops.backup import BackupResult
    from .ops.copy import CopyResult
    from .ops.diff import Diff
    from .ops.file_reader import ChunkFile
    from .ops.forget import ForgetResult
    from .ops.prune import PruneReport
    from .ops.retention import Policy
    from .ops.snapshot.store import SnapshotResult

DEFAULT_REPACK_THRESHOLD = 0.05      # ops.prune's default (a test keeps the two equal)


class Repo:
    """An open chunkrepo repository (use as a context manager)."""

    def __init__(self, path, wrap_storage=None, storage_options: Optional[dict] = None):
        """path: a local path or a URL (s3://bucket/prefix, memory://name, ...: any fsspec
        filesystem; storage_options are passed to it).  wrap_storage: a function wrapping
        the repository's storage (storage.faults in tests; $CHUNKREPO_FAULTS sets one for
        a CLI run)."""
        if wrap_storage is None:
            wrap_storage = faults_from_env()
        self._repo = Repository(os.fspath(path), wrap_storage, storage_options)
        self.path = self._repo.path
        self._closed = False

    @classmethod
    def init(cls, path, config: Optional[Config] = None, storage_options: Optional[dict] = None) -> "Repo":
        Repository.init(os.fspath(path), config, storage_options).close()
        return cls(path, storage_options=storage_options)

    @staticmethod
    def rebuild_index(path, storage_options: Optional[dict] = None):
        """Recreate the index of the repository at path from its packs and backup records
        (for a remote repository: its local index cache)."""
        from .ops.rebuild_index import rebuild_index
        return rebuild_index(os.fspath(path),
                             lambda loc, **kw: Repository(loc, storage_options=storage_options, **kw))

    @property
    def repository(self) -> Repository:
        return self._repo

    @property
    def storage_options(self) -> dict:
        """The options a remote repository's filesystem was opened with ({} for a local one)."""
        return dict(self._repo.storage_options)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._repo.close()

    def __enter__(self) -> "Repo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def backup(self, paths: Sequence, host: Optional[str] = None, subset: Optional[str] = None,
               excludes: Sequence[str] = (), one_file_system: bool = False,
               progress=None, source_options: Optional[dict] = None, **kw) -> BackupResult:
        """Back up local paths, or one fsspec URL (s3://bucket/data, memory://..., file:///...)
        whose filesystem gets source_options (endpoint_url=..., see docs/design.md)."""
        from .ops.backup import BackupOptions, run_backup
        from .ops.backup.fsspec_source import run_url_backup
        opts = BackupOptions(host=host, subset=subset, excludes=tuple(excludes),
                             one_file_system=one_file_system, progress=progress, **kw)
        paths = [os.fspath(p) for p in paths]
        urls = [p for p in paths if is_url(p)]
        if urls:
            if len(paths) != 1 or opts.listed_paths:
                raise ChunkrepoError("a URL is backed up on its own: one URL, no other paths")
            return run_url_backup(self._repo, urls[0], opts, source_options)
        return run_backup(self._repo, paths, opts)

    def list_backups(self, last_n: Optional[int] = None) -> List[BackupRecord]:
        recs = self._repo.list_backups()
        return recs[-last_n:] if last_n else recs

    def get_backup(self, backup_id: str) -> BackupRecord:
        return self._repo.resolve_backup(backup_id)

    def list_backup(self, backup_id: str, start="/", recursive: bool = True) -> Iterator[Entry]:
        rec = self._repo.resolve_backup(backup_id)
        return walk(self._repo, bytes.fromhex(rec.root), start, recursive)

    def open_file(self, backup_id: str, path) -> ChunkFile:
        from .ops.file_reader import ChunkFile
        rec = self._repo.resolve_backup(backup_id)
        node = find_node(self._repo, bytes.fromhex(rec.root), path)
        if node.kind != REG:
            raise NotFound(f"{os.fsdecode(path)}: not a regular file in backup {rec.id}")
        return ChunkFile(self._repo, node, os.fsencode(path))

    def produce_tar(self, backup_id: str, out, start="/", recursive: bool = True,
                    tar_format: str = "pax", progress=None, direct: bool = False, xattrs: bool = True):
        """Write a tar of the backup (or of start below it) to the binary file out.

        progress, if given, is called with the running stats about every 0.2 s.
        direct=True: out is a regular file no other process shares, written past
        the page cache with O_DIRECT (its descriptor's flags change meanwhile).
        xattrs=False leaves xattrs and ACLs out: the gnu and ustar formats cannot
        hold them, and refuse a backup that has any unless told so.
        """
        from .ops.tarout import write_tar
        rec = self._repo.resolve_backup(backup_id)
        return write_tar(self._repo, bytes.fromhex(rec.root), out, start, recursive, tar_format,
                         progress=progress, direct=direct, xattrs=xattrs, backup_id=rec.id)

    def restore(self, backup_id: str, target, start="/", progress=None, target_options: Optional[dict] = None,
                mirror: bool = False, overwrite: bool = False,
                on_safety_backup: Optional[Callable[[str], None]] = None, processes_after: Optional[int] = -1):
        """Recreate the backup (or start below it) inside the directory target, or at the
        fsspec URL target (whose filesystem gets target_options).  For a URL, overwrite
        replaces existing objects, and mirror also deletes what the backup does not have
        after a safety backup of the target (result.safety_backup; on_safety_backup(id)
        is called as soon as it is committed, before the target changes).  A URL target
        that holds the repository, or lies inside it, is refused.  processes_after: a local
        restore writes its files in processes of its own once it has queued this many bytes
        (-1: the default, 16 MiB; None: threads only; result.processes says how many ran)."""
        from .ops.restore import restore_tree
        from .ops.restore_fsspec import restore_to_url
        rec = self._repo.resolve_backup(backup_id)
        if is_url(target):
            return restore_to_url(self._repo, bytes.fromhex(rec.root), target, start, target_options,
                                  mirror=mirror, overwrite=overwrite, progress=progress,
                                  on_safety=on_safety_backup)
        if mirror or overwrite:
            raise ChunkrepoError("--mirror and --overwrite need a URL target "
                                 "(file:///path for a local directory)")
        return restore_tree(self._repo, bytes.fromhex(rec.root), os.fspath(target), start,
                            progress=progress, backup_id=rec.id, processes_after=processes_after)

    def check(self, read_data: bool = False, progress=None, read_data_subset: Optional[str] = None,
              repair: bool = False):
        """Verify the repository; returns a CheckReport (report.ok is False on damage).

        read_data_subset: 'n/k' or 'P%' of the packs to read and re-hash.
        repair: take the writer lock and repair what was found (ops.repair); the
        report is of what was found, report.repair says what was done and what remains."""
        from .ops.check import check_repository
        from .ops.repair import repair_repository
        if repair:
            return repair_repository(self._repo, read_data, progress, read_data_subset)
        return check_repository(self._repo, read_data=read_data, progress=progress,
                                read_data_subset=read_data_subset)

    def damaged_backups(self) -> dict:
        """Backups marked damaged by check --repair: id -> {"paths": [...], "paths_count": n}."""
        return self._repo.damaged_backups()

    def forget(self, backup_ids: Sequence[str] = (), policy: Optional[Policy] = None,
               dry_run: bool = False, prune: bool = False,
               repack_threshold: float = DEFAULT_REPACK_THRESHOLD) -> ForgetResult:
        """Remove backups by id (full or unique prefix), snapshots also by their full digest (every
        snapshot record of it), or by a retention policy; prune after if asked."""
        from .ops.forget import forget
        return forget(self._repo, backup_ids, policy, dry_run=dry_run, prune=prune,
                      repack_threshold=repack_threshold)

    def prune(self, dry_run: bool = False, repack_threshold: float = DEFAULT_REPACK_THRESHOLD) -> PruneReport:
        """Free the space of blobs no backup references (repack_threshold is a fraction, 0.05 = 5%)."""
        from .ops.prune import prune_repository
        return prune_repository(self._repo, repack_threshold, dry_run=dry_run)

    # -- snapshots (docs/snapshots.md) -------------------------------------------------
    def snapshot(self, path, workspace_dir=None, wait: float = 0) -> SnapshotResult:
        """Store a file or directory as a snapshot; result.digest is its BLAKE3 content digest.

        Threads of this process writing the repository take turns; while another process
        writes it, RepoLocked, unless that process finishes within wait seconds."""
        from .ops.snapshot.store import take_snapshot
        return take_snapshot(self._repo, path, workspace_dir, wait=wait)

    def clone(self, source: str, dest, path=None, mode: str = "symlink", download: bool = True):
        """Materialise a backup (or path inside it) or a snapshot digest at dest as links into
        the local read-only cache (mode: symlink, hardlink, reflink or copy); download=False
        makes the links without fetching the content.  Returns a PlaceResult."""
        from .ops.snapshot.materialise import clone as clone_version
        return clone_version(self._repo, source, os.fspath(dest), path, mode, download)

    # -- diff and copy -------------------------------------------------------------------
    def diff(self, a: str, b_or_path, path=None, content: bool = False,
             source_options: Optional[dict] = None) -> Diff:
        """What changed from backup a to backup b (id, unique prefix or 'latest'), or to the
        live tree at a path (a str that names no backup, or any os.PathLike/bytes), or to the
        objects at an fsspec URL (whose filesystem gets source_options, as for backup).

        Iterate the result for Change records in tree order; its .stats is complete after.
        path limits a diff of two backups, or of a backup and a URL, to that path inside them.
        content=True reads every live file to compare chunk ids (else equal size and mtime,
        or for objects equal size and ETag, mean equal content)."""
        from .ops.diff import diff_backups, diff_live
        from .ops.diff_url import diff_url
        left = self._repo.resolve_backup(a)
        if is_url(b_or_path):
            return diff_url(self._repo, left, b_or_path, path, content, source_options)
        right = None
        if isinstance(b_or_path, str):
            try:
                right = self._repo.resolve_backup(b_or_path)
            except NotFound:
                if not os.path.lexists(b_or_path):
                    raise NotFound(f"{b_or_path!r} is neither a backup nor an existing path") from None
        if right is not None:
            return diff_backups(self._repo, left, right, path)
        if path is not None:
            raise ChunkrepoError("a path filter goes with two backups or a URL; give the live path itself")
        return diff_live(self._repo, left, b_or_path, content)

    def copy_to(self, target: "Repo", backup_ids: Sequence[str] = (), dry_run: bool = False,
                progress=None) -> CopyResult:
        """Copy backups of this repository (all, or those named) that target lacks, with the
        same ids, sending only the blobs target's index lacks.  Resumable: a rerun after a
        kill sends nothing that was committed.  progress is called with the running result."""
        from .ops.copy import copy_backups
        return copy_backups(self._repo, target.repository, backup_ids, dry_run=dry_run, progress=progress)
