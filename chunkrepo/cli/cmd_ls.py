"""chunkrepo ls: a tar tvf (or tar tf) style listing of a backup."""

import os

import click

from ..ops.listing import directory_checked, tf_lines, tvf_lines
from .common import json_lines_option, open_repo, print_json, repo_option, write_lines


def _entry_json(e) -> dict:
    n = e.node
    d = {"path": "/" + os.fsdecode(e.path), "type": n.kind, "mode": n.mode, "uid": n.uid, "gid": n.gid,
         "user": n.user, "group": n.group, "size": n.size, "mtime_ns": n.mtime_ns}
    if n.target:
        d["target"] = os.fsdecode(n.target)
    if n.etag is not None:
        d["etag"] = n.etag
    if e.hardlink_to is not None:
        d["hardlink_to"] = "/" + os.fsdecode(e.hardlink_to)
    if n.rdev:
        d["rdev"] = [os.major(n.rdev), os.minor(n.rdev)]
    return d


@click.command("ls")
@repo_option
@click.argument("backup")
@click.argument("path", default="/")
@click.option("--simple", is_flag=True, help="Names only, like tar tf.")
@click.option("--nonrecursive", is_flag=True, help="Only PATH and its direct entries.")
@json_lines_option
def command(repo_path, backup, path, simple, nonrecursive, as_json):
    """List BACKUP (or PATH in it) as `tar tvf` lists the archive `chunkrepo tar` makes.
    A PATH ending in / must be a directory."""
    if not path:
        raise click.BadParameter("an empty path; / is the whole backup", param_hint="PATH")
    with open_repo(repo_path) as repo:
        entries = directory_checked(repo.list_backup(backup, path, recursive=not nonrecursive), path)
        if as_json:
            for e in entries:
                print_json(_entry_json(e))
        else:
            write_lines(tf_lines(entries) if simple else tvf_lines(entries))
