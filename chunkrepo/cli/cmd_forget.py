"""chunkrepo forget"""

import datetime
import sys

import click

from ..ops.retention import Policy, parse_duration
from .cmd_prune import print_report, threshold_option
from .common import json_option, open_repo, print_json, repo_option

_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def _when(ns) -> str:
    return datetime.datetime.fromtimestamp(ns // 1_000_000_000).strftime("%Y-%m-%d %H:%M:%S")


def _policy(counts: dict, within):
    if all(v is None for v in counts.values()) and within is None:
        return None
    return Policy(**{k: v or 0 for k, v in counts.items()},
                  within=parse_duration(within) if within is not None else None)


@click.command("forget")
@repo_option
@click.argument("backup_ids", nargs=-1, metavar="[BACKUP]...")
@click.option("--keep-last", type=click.IntRange(min=0), metavar="N", help="Keep the N newest backups.")
@click.option("--keep-hourly", type=click.IntRange(min=0), metavar="N",
              help="Keep the newest backup of each of the last N hours that have one.")
@click.option("--keep-daily", type=click.IntRange(min=0), metavar="N", help="Likewise for days (local calendar).")
@click.option("--keep-weekly", type=click.IntRange(min=0), metavar="N", help="Likewise for ISO weeks.")
@click.option("--keep-monthly", type=click.IntRange(min=0), metavar="N", help="Likewise for months.")
@click.option("--keep-yearly", type=click.IntRange(min=0), metavar="N", help="Likewise for years.")
@click.option("--keep-within", metavar="DURATION",
              help="Keep every backup newer than DURATION (e.g. 2d, 1w3d, 6m, 1y) before the newest one.")
@click.option("--prune", "do_prune", is_flag=True, help="Prune afterwards (free the space).")
@threshold_option
@click.option("--dry-run", "-n", is_flag=True, help="Only show what would be kept and removed, and why.")
@json_option
def command(repo_path, backup_ids, keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly,
            keep_yearly, keep_within, do_prune, threshold, dry_run, as_json):
    """Remove backups: those given by id, or those a retention policy does not keep.

    Backups are grouped by host and path set; each group is decided on its own
    (restic's --group-by host,paths). Space comes back with prune (or --prune)."""
    counts = dict(zip(_COUNTS, (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)))
    policy = _policy(counts, keep_within)
    with open_repo(repo_path) as repo:
        res = repo.forget(backup_ids, policy, dry_run=dry_run, prune=do_prune, repack_threshold=threshold)
    if as_json:
        print_json(res.to_dict())
    else:
        for g in res.groups:
            if policy is not None:
                click.echo(f"{g['host']}  {g['subset']}: keep {len(g['keep'])}, remove {len(g['remove'])}")
            for it in g["keep"]:
                click.echo(f"  keep    {it['id']}  {_when(it['start_ns'])}  {', '.join(it['reasons'])}")
            for it in g["remove"]:
                click.echo(f"  remove  {it['id']}  {_when(it['start_ns'])}")
        n = len(res.removed)
        if dry_run:
            click.echo(f"dry run: would remove {n} backups, keep {len(res.kept)}")
        else:
            click.echo(f"removed {n} backups, kept {len(res.kept)}")
        if res.prune is not None:
            if dry_run and n:
                click.echo("  (the prune estimate is for the repository as it is, before this forget)")
            print_report(res.prune, threshold)
    if res.prune is not None and res.prune.errors:
        sys.exit(1)
