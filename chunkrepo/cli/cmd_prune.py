"""chunkrepo prune"""

import sys

import click

from .common import human_bytes, json_option, open_repo, print_json, repo_option


def parse_threshold(ctx, param, value):
    """'5%' or '5' -> 0.05."""
    if value is None:
        return None
    text = str(value).strip().rstrip("%").strip()
    try:
        pct = float(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a percentage (e.g. 5%)") from None
    if not 0 <= pct < 100:
        raise click.BadParameter("must be at least 0% and less than 100%")
    return pct / 100


def threshold_option(f):
    return click.option("--repack-threshold", "threshold", default="5%", show_default=True,
                        callback=parse_threshold, metavar="PERCENT",
                        help="Rewrite a pack when more than this share of its bytes is unused.")(f)


def print_report(rep, threshold: float) -> None:
    verb = "would free" if rep.dry_run else "freed"
    dry = " (dry run)" if rep.dry_run else ""
    would = "would be " if rep.dry_run else ""
    earlier = f"{rep.earlier_files_deleted} pack files an earlier prune kept for its readers {would}deleted"
    if rep.nothing_to_do:
        if rep.garbage_blobs == 0:
            click.echo("prune: nothing to do: no unused blobs")
        else:
            click.echo(f"prune: nothing to do: {rep.garbage_blobs} unused blobs "
                       f"({human_bytes(rep.bytes_unused_kept)}) in {rep.packs_kept_with_garbage} packs "
                       f"below the {threshold * 100:g}% repack threshold")
    elif rep.packs_deleted or rep.packs_rewritten or not rep.earlier_files_deleted:
        click.echo(f"prune{dry}: {rep.packs_deleted} packs deleted, "
                   f"{rep.packs_rewritten} rewritten ({rep.blobs_moved} blobs, "
                   f"{human_bytes(rep.bytes_moved)} moved), {rep.blobs_freed} blobs and "
                   f"{human_bytes(max(rep.bytes_freed, 0))} {verb} in {rep.elapsed:.2f} s")
        if rep.earlier_files_deleted:
            click.echo(f"  {earlier} ({human_bytes(rep.earlier_bytes_freed)} {would}freed)")
    else:    # only what an earlier prune left for its readers (its own report counted it)
        click.echo(f"prune{dry}: {earlier}, {human_bytes(rep.earlier_bytes_freed)} {would}freed "
                   f"in {rep.elapsed:.2f} s")
    if rep.packs_kept_with_garbage and not rep.nothing_to_do:
        click.echo(f"  {rep.packs_kept_with_garbage} packs keep {human_bytes(rep.bytes_unused_kept)} "
                   f"unused (below the {threshold * 100:g}% repack threshold)")
    if rep.temporaries_removed:
        click.echo(f"  {rep.temporaries_removed} temporary files of killed writers "
                   f"({human_bytes(rep.temporary_bytes_removed)}) {would}removed")
    if rep.packs_awaiting_deletion:
        click.echo(f"  {rep.packs_awaiting_deletion} pack files ({human_bytes(rep.bytes_awaiting_deletion)}) "
                   f"wait for active readers; the next prune deletes them")
    for note in rep.not_counted:
        click.echo(f"  not counted: {note}")
    for e in rep.errors:
        click.echo(f"chunkrepo: error: {e}", err=True)


@click.command("prune")
@repo_option
@threshold_option
@click.option("--dry-run", "-n", is_flag=True, help="Only report what would be freed.")
@json_option
def command(repo_path, threshold, dry_run, as_json):
    """Free the space of data no backup references any more."""
    with open_repo(repo_path) as repo:
        rep = repo.prune(dry_run=dry_run, repack_threshold=threshold)
    if as_json:
        print_json(rep.to_dict())
    else:
        print_report(rep, threshold)
    if rep.errors:
        sys.exit(1)
