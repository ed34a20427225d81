"""chunkrepo backup: the nightly job."""

import gc
import os
import sys

import click

from ..errors import ChunkrepoError
from ..storage.open import parse_items
from .common import human_bytes, json_option, open_repo, print_json, repo_option
from .progress import BackupProgress

EXIT_SKIPPED = 3   # the backup completed, but some files could not be stored
# A backup makes a few objects per file (stat results, entries, tuples), none of them in
# reference cycles, so the collector's youngest generation (every 700 allocations by
# default) only walks them in vain: at 100,000 a first backup of 60k small files took
# ~8% less CPU (5.6 -> 5.1 s, medians of 4 alternating pairs) for ~1 MiB more RSS.
# A process-wide setting, so the CLI's, not the library's.
_GC_YOUNG_THRESHOLD = 100_000


def _read_files_from(source: str, null: bool):
    data = sys.stdin.buffer.read() if source == "-" else open(source, "rb").read()
    sep = b"\0" if null else b"\n"
    return [os.fsdecode(p) for p in data.split(sep) if p]


def _estimate(repo, host, subset):
    recs = [r for r in repo.list_backups() if r.end_ns is not None]
    if host:
        recs = [r for r in recs if r.host == host]
    if subset is not None:
        recs = [r for r in recs if r.subset == subset]
    return recs[-1].stats.get("bytes_total") if recs else None


@click.command("backup")
@repo_option
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--subset", help="Name of this set of paths (default: the paths themselves).")
@click.option("--host", help="Host name to record (default: this host's name).")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Leave out what matches this glob, and all below it (repeatable). A pattern "
                   "starting with / matches the whole path (/home/me/.cache); any other matches the "
                   "name or a run of trailing components at any depth ('.git', '*.tmp', 'a/b' leaves "
                   "out /x/a/b). * matches any characters, / too (as in GNU tar); ? one; [...] a set; "
                   "**/ zero or more directories (a/**/f matches a/f too); a trailing / is ignored.")
@click.option("--one-file-system", "-x", is_flag=True, help="Do not cross into other filesystems.")
@click.option("--files-from", metavar="FILE|-", help="Back up exactly the paths listed in FILE (- for stdin).")
@click.option("-0", "--null", is_flag=True, help="--files-from names are NUL-separated (find -print0).")
@click.option("--source-option", "source_options", multiple=True, metavar="KEY=VALUE",
              help="Option of a URL's filesystem, e.g. endpoint_url=http://... (repeatable).")
@json_option
def command(repo_path, paths, subset, host, excludes, one_file_system, files_from, null, source_options,
            as_json):
    """Back up PATHS, or one fsspec URL (s3://bucket/data, memory://..., file:///...).
    The last line on stdout is the new backup's id."""
    listed = bool(files_from)
    paths = list(paths) + (_read_files_from(files_from, null) if files_from else [])
    if not paths:
        if files_from:
            raise ChunkrepoError(f"--files-from {files_from}: no paths listed, nothing to back up")
        raise click.UsageError("give at least one PATH or --files-from")
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    with open_repo(repo_path, create_default=True) as repo:
        progress = BackupProgress(_estimate(repo, host, subset) if sys.stderr.isatty() else None)
        try:
            res = repo.backup(paths, host=host, subset=subset, excludes=excludes,
                              one_file_system=one_file_system, progress=progress, listed_paths=listed,
                              source_options=parse_items(source_options))
        finally:
            progress.close()
    for err in res.errors:
        click.echo(f"chunkrepo: {err}", err=True)
    if as_json:
        d = res.to_dict()
        d["errors"] = list(res.errors)
        print_json(d)
    else:
        click.echo(
            f"{res.files} files, {res.dirs} directories, {human_bytes(res.bytes_total)} in total; "
            f"read {human_bytes(res.bytes_read)}, new {human_bytes(res.bytes_new)} "
            f"(stored {human_bytes(res.bytes_stored)}); {res.files_borrowed} unchanged files not read; "
            f"{res.files_changed_during_backup} changed during backup; {res.skipped} skipped; "
            f"{res.elapsed:.1f} s", err=True)
        click.echo(res.id)
    if res.skipped or res.files_changed_during_backup:
        sys.exit(EXIT_SKIPPED)
