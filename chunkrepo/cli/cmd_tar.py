"""chunkrepo tar: stream a backup (or a part of it) as a tar archive."""

import os
import sys

import click

from ..errors import ChunkrepoError
from ..ops.traverse import split_path
from .common import open_repo, repo_option
from .progress import TarProgress


@click.command("tar")
@repo_option
@click.argument("backup")
@click.argument("path", default="/")
@click.option("-o", "--output", default="-", metavar="FILE|-", help="Where to write the tar (default: stdout).")
@click.option("--format", "tar_format", type=click.Choice(["pax", "gnu", "ustar"]), default="pax",
              show_default=True,
              help="pax holds everything: xattrs, and ACLs as GNU tar --acls writes them. gnu and ustar "
                   "cannot hold xattrs or ACLs: a backup that has any is refused (nothing is written) "
                   "unless --no-xattrs is given.")
@click.option("--no-xattrs", "no_xattrs", is_flag=True,
              help="Leave extended attributes and ACLs out of the archive.")
@click.option("--nonrecursive", is_flag=True, help="Only PATH and its direct entries.")
def command(repo_path, backup, path, output, tar_format, no_xattrs, nonrecursive):
    """Write BACKUP (or PATH in it) as a tar archive.

    \b
    Extract it with GNU tar as root, keeping everything:
      tar --xattrs --xattrs-include='*' --acls -xpf FILE

    The archive is read from the index as it was when the command started: a
    forget and prune of the backup meanwhile do not change it.
    """
    with open_repo(repo_path) as repo:
        rec = repo.get_backup(backup)
        if output == "-":
            if sys.stdout.isatty():
                raise ChunkrepoError("refusing to write a tar to a terminal: use -o FILE or a pipe")
            out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=1 << 20)
        else:
            out = open(output, "wb", buffering=1 << 20)
        total = (rec.stats or {}).get("bytes_total") if not split_path(path) and not nonrecursive else None
        ok = False
        try:
            with TarProgress(total) as progress:
                # O_DIRECT only on a file of our own: stdout's flags are shared with the shell
                stats = repo.produce_tar(rec.id, out, path, recursive=not nonrecursive, tar_format=tar_format,
                                         progress=progress if progress.enabled else None, direct=output != "-",
                                         xattrs=not no_xattrs)
            out.flush()
            ok = True
        finally:
            out.close()
            if not ok and output != "-":
                os.unlink(output)   # never leave a truncated archive that looks complete
    # a damaged repository: the archive is whole (every other member), the damaged files named
    for err in stats["errors"]:
        click.echo(f"chunkrepo: {err}", err=True)
    if stats["errors"]:
        raise ChunkrepoError(f"the archive was written without the content of {len(stats['errors'])} "
                             f"damaged file(s) (named above); 'chunkrepo check' tells more")
