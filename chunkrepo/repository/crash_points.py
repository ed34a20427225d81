"""Named points in the commit sequence where tests can kill the process.

With CHUNKREPO_CRASH_AT=NAME (or NAME:N for the N-th time the point is
reached) the process SIGKILLs itself there, exactly as a power cut or
`kill -9` would stop it; unset, a crash point costs one dict lookup.
"""

import os
import signal
import threading

_ENV = "CHUNKREPO_CRASH_AT"
_hits: dict = {}
_lock = threading.Lock()

POINTS = ("pack-sealed", "pack-step-committed", "checkpoint-committed", "backup-stored", "backup-registering",
          "backup-committed")
FORGET_POINTS = ("forget-committed", "forget-record-deleted")
PRUNE_POINTS = ("prune-packs-sealed", "prune-index-committed", "prune-before-delete")
REPAIR_POINTS = ("repair-pack-sealed", "repair-pack-committed")


def crash_point(name: str) -> None:
    spec = os.environ.get(_ENV)
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
