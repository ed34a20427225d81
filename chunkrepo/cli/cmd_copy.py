"""chunkrepo copy: backups from one repository into another (the offsite workflow)."""

import click

from ..api import Repo
from ..storage.open import parse_options
from .common import human_bytes, json_option, print_json
from .progress import Progress


class CopyProgress(Progress):
    """Called by the copy with its running CopyResult."""

    def __init__(self, enabled=None):
        super().__init__("copy", None, enabled=enabled)

    def __call__(self, res) -> None:
        self.update(res.bytes_sent, f"{len(res.backups_copied)} backups, {res.chunks_sent} chunks sent, "
                                    f"{res.chunks_present} present")


@click.command("copy")
@click.option("--from", "source", required=True, metavar="REPO",
              help="The repository to copy from (read, never locked).")
@click.option("--to", "target", required=True, metavar="REPO",
              help="The repository to copy into (takes its writer lock).")
@click.option("--from-option", "from_options", multiple=True, metavar="KEY=VALUE",
              help="An option of the source's filesystem when it is a URL, e.g. endpoint_url=... (repeatable).")
@click.option("--to-option", "to_options", multiple=True, metavar="KEY=VALUE",
              help="An option of the target's filesystem when it is a URL (repeatable).")
@click.argument("backups", nargs=-1, metavar="[BACKUP]...")
@click.option("--dry-run", "-n", is_flag=True, help="Only show what would be copied and sent.")
@json_option
def command(source, target, from_options, to_options, backups, dry_run, as_json):
    """Copy backups from one repository to another, sending only the chunks and directory
    records the target lacks (its index decides; nothing is asked of the store per chunk).

    BACKUP: ids, unique prefixes or 'latest' in the source; by default every backup
    the target lacks. A copied backup keeps its id and record. An interrupted copy
    (even kill -9) is resumed by running it again: what was committed is not sent again.
    Chunks are content-addressed, so copying between repositories with different chunker
    parameters is valid; later backups into the target just deduplicate less against them.
    Either repository may be a URL (s3://bucket/prefix ...); $CHUNKREPO_STORAGE_OPTIONS
    applies to both, --from-option / --to-option to one."""
    with Repo(source, storage_options=parse_options(from_options)) as src, \
            Repo(target, storage_options=parse_options(to_options)) as dst:
        with CopyProgress() as progress:
            res = src.copy_to(dst, backups, dry_run=dry_run, progress=progress if progress.enabled else None)
    if as_json:
        print_json(res.to_dict())
        return
    verb = "would copy" if dry_run else "copied"
    for bid in res.backups_copied:
        click.echo(f"{verb} {bid}")
    click.echo(f"{verb} {len(res.backups_copied)} backups ({len(res.backups_present)} already there); "
               f"{'would send' if dry_run else 'sent'} {res.chunks_sent} chunks "
               f"({human_bytes(res.bytes_sent)}) and {res.trees_sent} directory records; "
               f"skipped {res.chunks_present} chunks and {res.trees_present} records already present",
               err=True)
