"""chunkrepo diff: what changed between two backups, or between a backup and a live tree."""

import os
import sys

import click

from ..model.nodes import DIR
from ..ops.listing import quote_name, tar_locale_is_utf8
from ..storage.open import parse_items
from .common import human_bytes, json_lines_option, open_repo, print_json, repo_option, write_lines


def _shown(c, utf8: bool) -> str:
    """The path as `ls` (and tar tvf) prints names: one line whatever bytes it holds."""
    p = quote_name(c.path, utf8)
    return p + "/" if c.kind == DIR and p != "/" else p


def _change_json(c) -> dict:
    d = {"path": os.fsdecode(c.path), "change": c.change, "type": c.kind}
    if c.fields:
        d["fields"] = list(c.fields)
    if c.change == "T":
        d["old_type"] = c.old_kind
    return d


def _summary(s) -> str:
    return (f"added: {s.added}, removed: {s.removed}, modified: {s.modified}, "
            f"metadata only: {s.metadata_only}, type changed: {s.type_changed}; "
            f"{human_bytes(s.bytes_added)} added, {human_bytes(s.bytes_removed)} removed")


@click.command("diff")
@repo_option
@click.argument("a", metavar="A")
@click.argument("b", metavar="B|PATH|URL")
@click.argument("path", required=False, metavar="[SUBPATH]")
@click.option("--content", is_flag=True,
              help="Against a live tree or URL: read every file and compare chunk ids (default: equal "
                   "size and mtime, or size and ETag, mean equal content; a file with equal size and "
                   "another mtime is read).")
@click.option("--source-option", "source_options", multiple=True, metavar="KEY=VALUE",
              help="Option of the URL's filesystem, e.g. endpoint_url=http://... (repeatable).")
@json_lines_option
def command(repo_path, a, b, path, content, source_options, as_json):
    """Show what changed from backup A to backup B, or to the live tree at PATH or URL.

    A and B are backup ids, unique prefixes or 'latest'. B is taken as a live
    path when it names no backup (write ./NAME for a directory whose name is
    also a backup id prefix); the live tree is compared with the same absolute
    path in A. A URL (s3://bucket/data, memory://..., file:///...) is compared
    with where it is in A: in a backup of s3://b/data, s3://b/data/x is /x; in
    any other backup, the root. SUBPATH limits a diff of two backups, or of a
    backup and a URL, to that path in them.

    One line per change, in tree order, names escaped as `ls` prints them:
    '+' added, '-' removed, 'M' content modified (file data, symlink target,
    device number), 'U' metadata only (mode, owner, mtime, xattrs, link
    count), 'T' type changed; then a summary on stderr. --json prints one object per change ("path", "change", "type",
    "fields" for M and U) and then {"summary": {...}} with the counts, also as
    equal/different/only_left/only_right.  Directories identical in both
    backups are not descended (they count once as equal).

    The exit status is 0 whether or not there are differences (like restic's
    diff), 1 on errors."""
    with open_repo(repo_path) as repo:
        diff = repo.diff(a, b, path, content=content, source_options=parse_items(source_options))
        if as_json:
            for c in diff:
                print_json(_change_json(c))
            print_json({"summary": diff.stats.to_dict()})
        else:
            utf8 = tar_locale_is_utf8()
            write_lines(f"{c.change}    {_shown(c, utf8)}" for c in diff)
        for err in diff.stats.errors:
            click.echo(f"chunkrepo: {err}", err=True)
        if not as_json:
            click.echo(_summary(diff.stats), err=True)
    if diff.stats.errors:      # a part could not be compared: the listing is incomplete
        sys.exit(1)
