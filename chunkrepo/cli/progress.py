"""A progress line on stderr (tqdm) when it is a terminal; nothing otherwise.

Progress is the one line; the small classes below are the callbacks each
operation takes (backup: its result, restore: a RestoreResult, tar: its stats
dict, check: done/total packs) and turn what they get into it.
"""

import os
import sys
import threading
from typing import Optional



def _screen() -> tuple:
    try:
        cols, rows = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        cols, rows = 0, 0
    return cols or 100, rows or 24   # a pty with no size set says 0 (and tqdm then hides the bar)


class Progress:
    """One tqdm line: an amount done out of an optional total, with a note after it.

    Disabled (every call a no-op) unless stderr is a terminal.  update() takes
    the running total, not an increment; it may be called from any thread.
    """

    def __init__(self, desc: str, total=None, unit: str = "B", enabled: Optional[bool] = None):
        enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar = None
        self._seen = 0
        self._lock = threading.Lock()
        if enabled:
            cols, rows = _screen()
            scale = unit == "B"
            from tqdm import tqdm   # only on a terminal: tqdm costs ~30 ms to import
            self._bar = tqdm(total=total or None, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
                             file=sys.stderr, ncols=cols, nrows=rows, leave=False, mininterval=0.2, desc=desc)

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def update(self, done: int, note: Optional[str] = None, total=None) -> None:
        if self._bar is None:
            return
        with self._lock:
            if total is not None and total != self._bar.total:
                self._bar.total = total
            if self._bar.total is not None and done > self._bar.total:
                self._bar.total = done          # the estimate was short
            if note is not None:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(done - self._seen)
            self._seen = done

    def echo(self, line: str) -> None:
        """A line on stderr now, above the progress line if there is one."""
        if self._bar is None:
            print(line, file=sys.stderr, flush=True)
            return
        with self._lock:
            self._bar.write(line, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.refresh()     # the last counts, even when they came within mininterval
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BackupProgress(Progress):
    """Called by the backup with its running counts; shows files, bytes, rate and ETA."""

    def __init__(self, estimate_bytes=None, enabled=None):
        super().__init__("backup", estimate_bytes, enabled=enabled)

    def __call__(self, res) -> None:
        self.update(res.bytes_done, f"{res.files} files, {res.files_borrowed} unchanged")


class RestoreProgress(Progress):
    """Called by restore_tree with a RestoreResult of its running counts."""

    def __init__(self, total_bytes=None, enabled=None):
        super().__init__("restore", total_bytes, enabled=enabled)

    def __call__(self, res) -> None:
        self.update(res.bytes_written, f"{res.files} files, {res.dirs} directories")


class TarProgress(Progress):
    """Called by write_tar with its stats dict (content_bytes, files, ...)."""

    def __init__(self, total_bytes=None, enabled=None):
        super().__init__("tar", total_bytes, enabled=enabled)

    def __call__(self, stats: dict) -> None:
        self.update(stats["content_bytes"], f"{stats['files']} files")


class CheckProgress(Progress):
    """Called by check_repository with (done, total): packs checked (twice over with read_data:
    structure, then data)."""

    def __init__(self, read_data: bool = False, enabled=None):
        super().__init__("check --read-data" if read_data else "check", None,
                         unit="step" if read_data else "pack", enabled=enabled)

    def __call__(self, done: int, total: int) -> None:
        self.update(done, total=total or None)
