"""chunkrepo check: verify the repository's structure (and with --read-data, every byte)."""

import sys

import click

from .common import json_option, open_repo, print_json, repo_option
from .progress import CheckProgress


@click.command("check")
@repo_option
@click.option("--read-data", is_flag=True, help="Also read, decompress and re-hash every blob.")
@click.option("--read-data-subset", metavar="n/k|P%",
              help="Read and re-hash only a part of the packs: the n-th of k slices, or a random P%.")
@json_option
def command(repo_path, read_data, read_data_subset, as_json):
    """Verify the repository; exit status 1 when anything is damaged."""
    with open_repo(repo_path) as repo:
        with CheckProgress(read_data or bool(read_data_subset)) as progress:
            report = repo.check(read_data=read_data, progress=progress if progress.enabled else None,
                                read_data_subset=read_data_subset)
    if as_json:
        print_json(report.to_dict())
    else:
        for err in report.errors:
            click.echo(f"error: {err}", err=True)
        for bid, paths in sorted(report.damaged.items()):
            click.echo(f"backup {bid} is damaged: {len(paths)} paths", err=True)
            for p in paths[:20]:
                click.echo(f"  {p}", err=True)
        click.echo("no errors were found" if report.ok else f"{len(report.errors)} errors were found",
                   err=True)
    sys.exit(0 if report.ok else 1)
