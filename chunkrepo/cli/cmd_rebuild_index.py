"""chunkrepo rebuild-index: recreate the index from the packs and backup records."""

import click

from ..api import Repo
from ..errors import ChunkrepoError
from .common import default_repo_path, json_option, print_json, repo_option, storage_options


@click.command("rebuild-index")
@repo_option
@json_option
def command(repo_path, as_json):
    """Recreate the index from the store alone (pack trailers, directory records, backup records)."""
    res = Repo.rebuild_index(repo_path or default_repo_path(), storage_options())
    if as_json:
        print_json(res.to_dict())
    else:
        click.echo(f"index rebuilt from {res.packs} packs and {res.backups} backup records "
                   f"in {res.elapsed:.1f} s", err=True)
    for name in res.damaged_packs:
        n = res.salvaged_blobs.get(name, 0)
        click.echo(f"chunkrepo: {name}: damaged trailer; " +
                   (f"{n} of its blobs verified and were adopted ('chunkrepo check --repair' moves them "
                    f"to a sound pack)" if n else "none of its blobs could be verified: none adopted"), err=True)
    for bid in res.records_from_index:
        click.echo(f"chunkrepo: backup {bid}: its record file is damaged; registered from the old index's "
                   f"copy ('chunkrepo check --repair' writes the file again)", err=True)
    for bid in res.records_rewritten:
        click.echo(f"chunkrepo: backup {bid}: its record file was missing; written again from the old index's "
                   f"copy", err=True)
    for bid in res.unregistered_backups:
        click.echo(f"chunkrepo: backup {bid}: some of its records are missing; not registered", err=True)
    if res.damaged_packs or res.unregistered_backups or res.records_from_index or res.records_rewritten:
        raise ChunkrepoError("the index was rebuilt, but the store is damaged: run 'chunkrepo check --repair "
                             "--read-data'")
