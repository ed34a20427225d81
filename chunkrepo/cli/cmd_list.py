"""chunkrepo list-backups"""

import datetime

import click

from .common import json_option, open_repo, print_json, repo_option


def _when(ns):
    if ns is None:
        return "incomplete"
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


@click.command("list-backups")
@repo_option
@click.option("--last", "last_n", type=click.IntRange(min=1), help="Only the last N backups.")
@json_option
def command(repo_path, last_n, as_json):
    """List the backups (and snapshots), oldest first: id, kind, host, subset, start, finish, files, bytes
    (and a snapshot's digest)."""
    with open_repo(repo_path) as repo:
        recs = repo.list_backups(last_n)
        damaged = repo.damaged_backups()
    if as_json:      # one array, oldest first (as restic's snapshots --json)
        docs = []
        for r in recs:
            d = r.to_dict()
            if r.id in damaged:       # marked by check --repair: {"paths": [...], "paths_count": n}
                d["damaged"] = damaged[r.id]
            docs.append(d)
        print_json(docs)
        return
    for r in recs:
        st = r.stats
        mark = f"  DAMAGED ({damaged[r.id]['paths_count']} paths)" if r.id in damaged else ""
        if r.kind == "snapshot" and r.snapshot:
            mark = f"  digest {r.snapshot.get('digest')}{mark}"
        click.echo(f"{r.id}  {r.kind:8}  {r.host}  {r.subset}  {_when(r.start_ns)}  {_when(r.end_ns)}  "
                   f"{st.get('files', 0)} files  {st.get('bytes_total', 0)} bytes{mark}")
