"""Named points in the commit sequence where tests can kill or pause the process.

With CHUNKREPO_CRASH_AT=NAME (or NAME:N for the N-th time the point is
reached) the process SIGKILLs itself there, exactly as a power cut or
`kill -9` would stop it; with CHUNKREPO_STOP_AT=NAME[:N] it SIGSTOPs itself
there (a suspended process: a test lets another writer act, then sends
SIGCONT).  Unset, a point costs two dict lookups.
"""

import os
import signal
import threading

_ENVS = (("CHUNKREPO_CRASH_AT", signal.SIGKILL), ("CHUNKREPO_STOP_AT", signal.SIGSTOP))
_hits: dict = {}
_lock = threading.Lock()

POINTS = ("pack-sealed", "pack-step-committed", "checkpoint-committed", "backup-flushed", "backup-checked",
          "backup-stored", "backup-registering", "backup-committed")
FORGET_POINTS = ("forget-committed", "forget-record-deleted")
PRUNE_POINTS = ("prune-packs-sealed", "prune-index-committed", "prune-before-delete")
REPAIR_POINTS = ("repair-pack-sealed", "repair-pack-committed")
# a rebuild's switch (repository.index_dirs); "rebuild-index-moved" only where the switch takes two renames
REBUILD_POINTS = ("rebuild-built", "rebuild-ready", "rebuild-index-moved", "rebuild-switched")


def crash_point(name: str) -> None:
    for env, sig in _ENVS:
        spec = os.environ.get(env)
        if not spec:
            continue
        want, _, nth = spec.partition(":")
        if want != name:
            continue
        with _lock:
            _hits[env, name] = _hits.get((env, name), 0) + 1
            hit = _hits[env, name] == int(nth or 1)      # a stopped process stops once
        if hit:
            os.kill(os.getpid(), sig)
