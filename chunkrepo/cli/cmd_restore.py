"""chunkrepo restore: recreate a backup (or a part of it) in a directory."""

import click

from ..errors import ChunkrepoError
from .common import json_option, open_repo, print_json, repo_option


@click.command("restore")
@repo_option
@click.argument("backup")
@click.argument("path", default="/")
@click.option("--target", required=True, type=click.Path(file_okay=False), help="Directory to restore into.")
@json_option
def command(repo_path, backup, path, target, as_json):
    """Restore BACKUP (or PATH in it) into TARGET (which must be empty or absent)."""
    with open_repo(repo_path) as repo:
        res = repo.restore(backup, target, path)
    d = res.to_dict() if hasattr(res, "to_dict") else dict(res.__dict__)
    if as_json:
        print_json(d)
    for err in d.get("errors", []):
        click.echo(f"chunkrepo: {err}", err=True)
    if d.get("errors"):
        raise ChunkrepoError(f"restore finished with {len(d['errors'])} errors")
