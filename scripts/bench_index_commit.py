#!/usr/bin/env python3
"""The index work of a first backup, alone: committing its packs and registering it.

    python3 scripts/bench_index_commit.py REPO [--rounds 2]

REPO holds one backup (a first backup, e.g. of the scale-1.0 corpus).  Each
round makes a fresh repository next to it with an empty index, then, in one
write session, commits every pack of REPO into it as the backup that wrote
them did (WriteSession._commit_pack, claimed: the session's own blobs) and
registers REPO's first backup (its references, in id order).  The pack files
are not copied: only the index is written, so this times what the main thread
does for the index during and after a first backup.  Prints the CPU seconds
(this thread) and page faults of each part.
"""

import argparse
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from chunkrepo.codec import records  # noqa: E402
from chunkrepo.model import BackupRecord  # noqa: E402
from chunkrepo.repository.packs import KIND_TREE, pack_id_from_name, read_trailer  # noqa: E402
from chunkrepo.repository.repository import Repository  # noqa: E402


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


def one_round(src: Repository, packs: list, records_by_id: dict, rec: BackupRecord, dst_path: str) -> tuple:
    # a new path each round: a process keeps one LMDB environment per path open
    Repository.init(dst_path, src.config)
    dst = Repository(dst_path)
    try:
        with dst.write_session() as s:
            s._pending_trees.update(records_by_id)
            t, f = time.thread_time(), _faults()
            for pid, entries, size in packs:
                s._commit_pack(pid, entries, size, claimed=True)
            s.flush()
            commit = (time.thread_time() - t, _faults() - f)
            t, f = time.thread_time(), _faults()
            s._register_backup(rec)
            register = (time.thread_time() - t, _faults() - f)
    finally:
        dst.close()
    return commit, register


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    src = Repository(a.repo)
    names = list(src.storage.list("packs"))
    packs = [(pack_id_from_name(n), read_trailer(src.storage, n), src.storage.size(n)) for n in names]
    backups = sorted(src.storage.list("backups"))
    if not backups:
        sys.exit(f"{a.repo}: no backup")
    rec = BackupRecord.from_dict(records.decode_json(src.storage.get(backups[0])))
    tree_ids = [e.id for _, entries, _ in packs for e in entries if e.kind == KIND_TREE]
    with src.index.read() as v:
        records_by_id = {tid: v.tree_data(tid) for tid in tree_ids}
    n = sum(len(e) for _, e, _ in packs)
    print(f"{len(packs)} packs, {n} blobs ({len(tree_ids)} directory records)")
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(a.repo))) as work:
        for r in range(a.rounds):
            (cc, cf), (rc, rf) = one_round(src, packs, records_by_id, rec, os.path.join(work, f"repo{r}"))
            print(f"round {r + 1}: commit {cc:.3f} CPU-s {cf} faults; register {rc:.3f} CPU-s {rf} faults")
    src.close()


if __name__ == "__main__":
    main()
