"""chunkrepo init"""

import click

from ..api import Repo
from .common import default_repo_path, repo_option, storage_options


@click.command("init")
@repo_option
def command(repo_path):
    """Create an empty repository."""
    path = repo_path or default_repo_path()
    with Repo.init(path, storage_options=storage_options()) as repo:
        click.echo(f"created chunkrepo repository {repo.path}", err=True)
