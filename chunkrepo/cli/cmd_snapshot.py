"""chunkrepo snapshot PATH | snapshot --restore DIGEST OUT_PATH"""

import os
import warnings

import click

from ..errors import ChunkrepoError
from ..ops.snapshot.cache import LocalCache
from ..ops.snapshot.place import MODES
from .common import human_bytes, json_option, open_repo, print_json, repo_option


def _restore(repo, digest: str, out_path: str, overwrite, mode: str) -> str:
    from ..ops.snapshot.materialise import _plan_snapshot_dir, file_dest, place_tree, restore_file_at
    from ..ops.snapshot.store import locate
    loc = locate(repo.repository, digest)
    cache = LocalCache()
    if loc.type == "dir":
        plan = _plan_snapshot_dir(repo.repository, loc)
        place_tree(repo.repository, cache, plan, out_path, mode, True, overwrite)
        return os.path.abspath(out_path)
    name = os.path.basename(os.fsdecode(loc.path))
    dest, named = file_dest(out_path, name)
    if named and os.path.splitext(dest)[1] != os.path.splitext(name)[1]:
        raise ChunkrepoError(f"{dest} has a different extension than the snapshot's {name}; "
                             f"give a directory or a name ending in {os.path.splitext(name)[1] or 'no extension'}")
    return restore_file_at(repo.repository, cache, loc, dest, overwrite, mode)


@click.command("snapshot")
@repo_option
@click.argument("path", type=click.Path())
@click.option("--restore", "digest", metavar="DIGEST",
              help="Restore the snapshot DIGEST (file or directory) at PATH instead of taking one.")
@click.option("--mode", type=click.Choice(MODES), default="symlink", show_default=True,
              help="With --restore: how files are put in place (links into the local read-only cache, or copies).")
@click.option("--overwrite/--no-overwrite", default=None,
              help="With --restore: replace existing files silently / refuse (default: replace with a warning).")
@click.option("--workspace", type=click.Path(file_okay=False),
              help="Record the path relative to this directory (default: pyproject.toml or git root).")
@click.option("--wait", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
              help="While another process writes the repository, keep trying for up to SECONDS "
                   "(default: fail at once).")
@json_option
def command(repo_path, path, digest, mode, overwrite, workspace, wait, as_json):
    """Snapshot the file or directory PATH and print its BLAKE3 digest; with --restore DIGEST,
    restore that snapshot at PATH."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if digest:
            with open_repo(repo_path) as repo:
                out = _restore(repo, digest, path, overwrite, mode)
            _echo_warnings(caught)
            if as_json:
                print_json({"digest": digest, "path": out})
            else:
                click.echo(out)
            return
        with open_repo(repo_path, create_default=True) as repo:
            res = repo.snapshot(path, workspace, wait=wait)
        _echo_warnings(caught)
    if as_json:
        print_json({"id": res.id, "digest": res.digest, "type": res.type, "name": res.name,
                    "relpath": res.relpath, "original_path": res.original_path,
                    "content_length": res.content_length, "stats": res.stats})
        return
    st = res.stats
    click.echo(f"{res.type} {res.original_path}: {st.get('files', 0)} files, "
               f"{human_bytes(res.content_length)}; read {human_bytes(st.get('bytes_read', 0))}, "
               f"new {human_bytes(st.get('bytes_new', 0))}; snapshot {res.id}", err=True)
    click.echo(res.digest)


def _echo_warnings(caught) -> None:
    for w in caught:
        click.echo(f"chunkrepo: warning: {w.message}", err=True)
