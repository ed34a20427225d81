"""A progress line on stderr (tqdm) when it is a terminal; nothing otherwise."""

import os
import sys
import threading

from tqdm import tqdm


def _screen() -> tuple:
    try:
        cols, rows = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        cols, rows = 0, 0
    return cols or 100, rows or 24   # a pty with no size set says 0 (and tqdm then hides the bar)


class BackupProgress:
    """Called by the backup with its running counts; shows files, bytes, rate and ETA."""

    def __init__(self, estimate_bytes=None, enabled=None):
        enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar = None
        self._seen = 0
        self._lock = threading.Lock()   # called from the walk and from reader threads
        if enabled:
            self._bar = tqdm(total=estimate_bytes or None, unit="B", unit_scale=True, unit_divisor=1024,
                             file=sys.stderr, ncols=_screen()[0], nrows=_screen()[1], leave=False, mininterval=0.2,
                             desc="backup")

    def __call__(self, res) -> None:
        if self._bar is None:
            return
        with self._lock:
            done = res.bytes_done
            if self._bar.total is not None and done > self._bar.total:
                self._bar.total = done
            self._bar.set_postfix_str(f"{res.files} files, {res.files_borrowed} unchanged", refresh=False)
            self._bar.update(done - self._seen)
            self._seen = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
