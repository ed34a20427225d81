"""forget: remove backups, by id or by a retention policy (ops.retention).

Removing backups is one LMDB write transaction: each root loses a reference
with the reverse cascade (session.decref_tree: a directory record going 1 -> 0
releases its subtrees and chunks; blobs reaching 0 enter the garbage set) and
the backup leaves the `backups` db.  Then the record objects `backups/ID` are
deleted.  A kill between the two leaves a stored record the index does not
list: the next write session's recover() registers it again, so the forget is
undone and nothing is lost.  Space comes back with prune (`forget --prune`).
"""

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from ..errors import ChunkrepoError, NotFound
from ..repository.crash_points import crash_point
from ..repository.session import decref_tree
from . import retention
from .prune import DEFAULT_REPACK_THRESHOLD, PruneReport, count_temporaries, run_prune, stale_temporaries
from .snapshot.cache import is_digest


@dataclass
class ForgetResult:
    dry_run: bool
    policy: Optional[dict]
    groups: List[dict] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)
    prune: Optional[PruneReport] = None

    def to_dict(self) -> dict:
        return {"dry_run": self.dry_run, "policy": self.policy, "groups": self.groups,
                "removed": list(self.removed), "kept": list(self.kept),
                "prune": self.prune.to_dict() if self.prune is not None else None}


def _item(rec, reasons=None) -> dict:
    d = {"id": rec.id, "start_ns": rec.start_ns, "paths": list(rec.paths)}
    if reasons is not None:
        d["reasons"] = list(reasons)
    return d


def _named(repo, recs, ref: str) -> list:
    """The records ref names: a backup id (full or unique prefix), or a snapshot's full digest
    (64 hex digits, longer than any id), which names every snapshot record of that digest."""
    if not is_digest(ref.lower()):
        try:
            return [repo.resolve_backup(ref)]       # NotFound / AmbiguousId: one line
        except NotFound as e:
            if any(r.kind == "snapshot" for r in recs):
                raise NotFound(f"{e} (a snapshot goes by its id, or by its whole 64-digit digest)") from None
            raise
    hits = [r for r in recs if r.kind == "snapshot" and (r.snapshot or {}).get("digest") == ref.lower()]
    if not hits:
        raise NotFound(f"no snapshot with digest {ref} (a file inside a directory snapshot goes with "
                       f"that snapshot's digest or id)")
    return hits


def _decide(repo, ids: Sequence[str], policy: Optional[retention.Policy], localtime):
    """(groups as dicts, records to remove, ids kept) for the repository as it is now."""
    recs = repo.list_backups()
    if ids:
        chosen = {}
        for ref in ids:
            if ref == "latest":
                raise ChunkrepoError("forget takes backup ids, not 'latest'")
            for rec in _named(repo, recs, ref):
                chosen[rec.id] = rec
        remove = [r for r in recs if r.id in chosen]
        by_key: dict = {}
        for r in remove:
            by_key.setdefault((r.host, r.subset), []).append(_item(r))
        groups = [{"host": h, "subset": sub, "keep": [], "remove": items}
                  for (h, sub), items in sorted(by_key.items())]
        kept = [r.id for r in recs if r.id not in chosen]
        return groups, remove, kept
    plans = retention.plan(recs, policy, localtime or retention.system_localtime)
    groups, remove, kept = [], [], []
    for g in plans:
        groups.append({"host": g.host, "subset": g.subset,
                       "keep": [_item(d.backup, d.reasons) for d in g.keep],
                       "remove": [_item(d.backup) for d in g.remove]})
        remove.extend(d.backup for d in g.remove)
        kept.extend(d.backup.id for d in g.keep)
    return groups, remove, kept


def remove_backups(repo, recs) -> None:
    """Inside a write session: the index transaction, then the record objects."""
    if not recs:
        return
    with repo.index.write() as w:
        for rec in recs:
            if w.backup(rec.id) is None:
                continue
            decref_tree(w, bytes.fromhex(rec.root))
            w.delete_backup(rec.id)
    crash_point("forget-committed")
    repo.check_lock()
    for rec in recs:
        try:
            repo.storage.delete(f"backups/{rec.id}")
        except NotFound:
            pass
        crash_point("forget-record-deleted")


def forget(repo, ids: Sequence[str] = (), policy: Optional[retention.Policy] = None,
           dry_run: bool = False, prune: bool = False,
           repack_threshold: float = DEFAULT_REPACK_THRESHOLD, localtime=None) -> ForgetResult:
    """Forget backups of repo (a repository.Repository) by ids or by policy; prune after if asked."""
    ids = list(ids)
    if ids and policy is not None:
        raise ChunkrepoError("give either backup ids or a retention policy, not both")
    if not ids and policy is None:
        raise ChunkrepoError("no policy and no backup ids: refusing to forget every backup "
                             "(give --keep-last N, --keep-daily N, ... or backup ids)")
    if policy is not None:
        policy.validate()
    res = ForgetResult(dry_run=dry_run, policy=policy.to_dict() if policy is not None else None)
    if dry_run:
        res.groups, remove, res.kept = _decide(repo, ids, policy, localtime)
        res.removed = [r.id for r in remove]
        if prune:
            res.prune = run_prune(repo, repack_threshold, dry_run=True)
        return res
    temporaries = stale_temporaries(repo) if prune else []    # what the session's recovery removes
    with repo.write_session():
        # decided under the lock, after recover(): what a killed writer left counts
        res.groups, remove, res.kept = _decide(repo, ids, policy, localtime)
        res.removed = [r.id for r in remove]
        remove_backups(repo, remove)
        if prune:
            res.prune = run_prune(repo, repack_threshold)
            count_temporaries(res.prune, temporaries)
    return res


__all__ = ["ForgetResult", "forget", "remove_backups"]
