"""chunkrepo restore: recreate a backup (or a part of it) in a directory."""

import click

from ..errors import ChunkrepoError
from ..storage.open import parse_items
from ..ops.traverse import split_path
from .common import json_option, open_repo, print_json, repo_option
from .progress import RestoreProgress


@click.command("restore")
@repo_option
@click.argument("backup")
@click.argument("path", default="/")
@click.option("--target", required=True, type=click.Path(file_okay=False),
              help="Directory or fsspec URL (s3://bucket/prefix, ...) to restore into.")
@click.option("--target-option", "target_options", multiple=True, metavar="KEY=VALUE",
              help="Option of the target URL's filesystem, e.g. endpoint_url=http://... (repeatable).")
@click.option("--overwrite", is_flag=True, help="URL target: replace existing objects of the same name.")
@click.option("--mirror", is_flag=True,
              help="URL target: also delete what the backup does not have, after a safety backup of the target.")
@json_option
def command(repo_path, backup, path, target, target_options, overwrite, mirror, as_json):
    """Restore BACKUP (or PATH in it) into TARGET (which must be empty or absent, unless
    a URL target is given --overwrite or --mirror)."""
    if not target:
        raise click.BadParameter("an empty path", param_hint="--target")
    with open_repo(repo_path) as repo:
        rec = repo.get_backup(backup)
        # the whole backup's size is known from its stats; a part of it shows no ETA
        total = (rec.stats or {}).get("bytes_total") if not split_path(path) else None
        with RestoreProgress(total) as progress:
            def safety_done(bid: str) -> None:      # before the target changes: an interrupt must not hide it
                progress.echo(f"chunkrepo: safety backup of the target before the mirror: {bid} "
                              f"(restore it with --mirror to undo)")

            res = repo.restore(rec.id, target, path, progress=progress if progress.enabled else None,
                               target_options=parse_items(target_options), mirror=mirror,
                               overwrite=overwrite, on_safety_backup=safety_done)
    d = res.to_dict()
    if d.get("skipped_special"):
        click.echo(f"chunkrepo: {d['skipped_special']} symlinks, devices or FIFOs skipped: "
                   "the target holds files and directories only", err=True)
    if as_json:
        print_json(d)
    for err in d["errors"]:
        click.echo(f"chunkrepo: {err}", err=True)
    if d["errors"]:
        raise ChunkrepoError(f"restore finished with {len(d['errors'])} errors")
