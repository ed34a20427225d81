"""chunkrepo cache path|size|clear: the local read-only cache of snapshot content."""

import click

from ..ops.snapshot.cache import LocalCache
from .common import human_bytes, json_option, print_json


@click.group("cache")
def command():
    """The local cache of restored snapshot content ($CHUNKREPO_CACHE_DIR or ~/.cache/chunkrepo)."""


@command.command("path")
def path_cmd():
    """Print the cache directory."""
    click.echo(LocalCache().root)


@command.command("size")
@json_option
def size_cmd(as_json):
    """How much the cache holds."""
    info = LocalCache().size()
    if as_json:
        print_json(info)
    else:
        click.echo(f"{human_bytes(info['bytes'])} in {info['objects']} objects ({info['path']})")


@command.command("clear")
@json_option
def clear_cmd(as_json):
    """Remove everything in the cache (restored links into it will dangle)."""
    info = LocalCache().clear()
    if as_json:
        print_json(info)
    else:
        click.echo(f"removed {info['objects_removed']} objects from {info['path']}; "
                   f"{info['dangling_links']} restored links now dangle")
