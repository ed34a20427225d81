"""A progress line on stderr (tqdm) when it is a terminal; nothing otherwise."""

import sys

from tqdm import tqdm


class BackupProgress:
    """Called by the backup with its running counts; shows files, bytes, rate and ETA."""

    def __init__(self, estimate_bytes=None, enabled=None):
        enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar = None
        self._seen = 0
        if enabled:
            self._bar = tqdm(total=estimate_bytes or None, unit="B", unit_scale=True, unit_divisor=1024,
                             file=sys.stderr, dynamic_ncols=True, leave=False, mininterval=0.2,
                             desc="backup")

    def __call__(self, res) -> None:
        if self._bar is None:
            return
        scanned = res.bytes_total
        if self._bar.total is not None and scanned > self._bar.total:
            self._bar.total = scanned
        self._bar.update(scanned - self._seen)
        self._seen = scanned
        self._bar.set_postfix_str(f"{res.files} files, {res.files_borrowed} unchanged", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
