"""chunkrepo restore: recreate a backup (or a part of it) in a directory."""

import click

from ..errors import ChunkrepoError
from ..ops.traverse import split_path
from .common import json_option, open_repo, print_json, repo_option
from .progress import RestoreProgress


@click.command("restore")
@repo_option
@click.argument("backup")
@click.argument("path", default="/")
@click.option("--target", required=True, type=click.Path(file_okay=False), help="Directory to restore into.")
@json_option
def command(repo_path, backup, path, target, as_json):
    """Restore BACKUP (or PATH in it) into TARGET (which must be empty or absent)."""
    with open_repo(repo_path) as repo:
        rec = repo.get_backup(backup)
        # the whole backup's size is known from its stats; a part of it shows no ETA
        total = (rec.stats or {}).get("bytes_total") if not split_path(path) else None
        with RestoreProgress(total) as progress:
            res = repo.restore(rec.id, target, path, progress=progress if progress.enabled else None)
    d = res.to_dict()
    if as_json:
        print_json(d)
    for err in d["errors"]:
        click.echo(f"chunkrepo: {err}", err=True)
    if d["errors"]:
        raise ChunkrepoError(f"restore finished with {len(d['errors'])} errors")
