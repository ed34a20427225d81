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
@click.option("--repair", is_flag=True,
              help="Repair what is found (takes the writer lock): salvage damaged packs, mark lost data "
                   "and the backups that lost it, rewrite drifted reference counts.")
@json_option
def command(repo_path, read_data, read_data_subset, repair, as_json):
    """Verify the repository; exit status 1 when anything is damaged (with --repair: when
    damage remains after repairing, e.g. backups that lost data)."""
    with open_repo(repo_path) as repo:
        with CheckProgress(read_data or bool(read_data_subset)) as progress:
            report = repo.check(read_data=read_data, progress=progress if progress.enabled else None,
                                read_data_subset=read_data_subset, repair=repair)
    if as_json:
        print_json(report.to_dict())
    else:
        _show(report)
    ok = report.ok if report.repair is None else not report.repair.unrepaired
    sys.exit(0 if ok else 1)


def say(msg: str) -> None:
    click.echo(msg, err=True)


def _show(report) -> None:
    for err in report.errors:
        say(f"error: {err}")
    for bid, paths in sorted(report.damaged.items()):
        say(f"backup {bid} is damaged: {len(paths)} paths")
        for p in paths[:20]:
            say(f"  {p}")
    for bid, paths in sorted(report.unreadable.items()):
        say(f"backup {bid} cannot be read in full: {len(paths)} paths have data in packs that could not "
            f"be read (an I/O error, not damage; check again once the storage reads them)")
        for p in paths[:20]:
            say(f"  {p}")
    r = report.repair
    if r is None:
        whole = sorted(set(report.marked_damaged) - set(report.damaged))
        for bid in whole:
            say(f"note: backup {bid} is marked damaged but whole again ('check --repair' clears the mark)")
        say("no errors were found" if report.ok else f"{len(report.errors)} errors were found")
        return
    if r.nothing_to_do:
        say("no errors were found: nothing to repair")
        return
    for a in r.actions:
        say(f"repair: {a}")
    for e in r.remaining:
        say(f"not repaired: {e}")
    if r.damaged:
        say(f"{len(r.damaged)} backups remain damaged: a backup of the same paths stores lost data again "
            f"if the files are unchanged; or forget them")
    say("repair incomplete: damage remains" if r.unrepaired else "repair complete: no errors remain")
