"""chunkrepo unlock: say who holds the writer lock; clear what a dead writer left."""

import os

import click

from ..errors import RepoLocked
from ..repository.lease import break_lock
from ..repository.lock import inspect_lock, read_only_error
from .common import open_repo, repo_option


@click.command("unlock")
@repo_option
def command(repo_path):
    """Report the writer lock.  A running writer's lock is never broken (the
    kernel frees it when that process ends); holder information left by a
    writer that died is cleared.  On an object store the lock object is removed
    (unless its holder is a live process of this host)."""
    with open_repo(repo_path) as repo:
        if repo.repository.remote:
            who = break_lock(repo.repository.storage)
            click.echo(f"removed the lock of {who}; make sure that writer is not running" if who
                       else "the repository is not locked", err=True)
            return
        if repo.repository.read_only:      # no writer can run there, and nothing can be cleared
            raise read_only_error(repo.path, repo.repository.read_only)
        held, who = inspect_lock(os.path.join(repo.path, "lock"))
    if held:
        raise RepoLocked(f"repository is locked by {who}, which is still running: not unlocked")
    if who and "(another host)" in who:
        # flock does not reach every network file system: the user vouches that it is gone
        click.echo(f"cleared the lock of {who}; make sure that writer is not running", err=True)
    elif who:
        click.echo(f"cleared the lock information of {who}: that writer is gone", err=True)
    else:
        click.echo("the repository is not locked", err=True)
