"""chunkrepo clone BACKUP_OR_DIGEST DEST [PATH]"""

import click

from ..ops.snapshot.place import MODES
from .common import human_bytes, json_option, open_repo, print_json, repo_option


@click.command("clone")
@repo_option
@click.argument("source", metavar="BACKUP_OR_DIGEST")
@click.argument("dest", type=click.Path())
@click.argument("path", required=False)
@click.option("--mode", type=click.Choice(MODES), default="symlink", show_default=True,
              help="Links into the local read-only cache, or copies (reflink falls back to copy).")
@click.option("--no-download", is_flag=True,
              help="Make the links without fetching the content (a write-only clone: links may dangle).")
@json_option
def command(repo_path, source, dest, path, mode, no_download, as_json):
    """Clone a backup (or PATH inside it) or a snapshot digest into DEST as links into the
    local read-only cache.  To change a file, replace its link with a real file; the next
    `chunkrepo snapshot DEST` or `chunkrepo backup DEST` reads only the replaced files."""
    with open_repo(repo_path) as repo:
        res = repo.clone(source, dest, path, mode=mode, download=not no_download)
    if as_json:
        print_json(res.to_dict())
        return
    click.echo(f"cloned {res.source} into {res.path}: {res.files} files ({res.mode}), {res.dirs} directories, "
               f"{res.symlinks} symlinks; fetched {res.objects_written} objects "
               f"({human_bytes(res.bytes_written)}); {res.kept} already in place"
               + (f"; {res.dangling} links dangle until their content is fetched" if res.dangling else ""),
               err=True)
    click.echo(res.path)
