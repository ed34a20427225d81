"""What the commands share: the --repo (and --storage-option) options, opening a repo, JSON output."""

import json
import os
import sys

import click

from ..api import Repo
from ..errors import NotARepository
from ..paths import REPO_ENV, default_repo_path  # noqa: F401  (resolution shared with the Python API)
from ..storage.open import OPTIONS_ENV, parse_options


_OPTIONS_KEY = "chunkrepo.storage_options"


def _keep_storage_options(ctx, param, value):
    ctx.meta[_OPTIONS_KEY] = tuple(value or ())


def repo_option(f):
    f = click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
                     expose_value=False, callback=_keep_storage_options,
                     help=f"An option of a remote repository's filesystem, e.g. endpoint_url=http://... "
                          f"(repeatable; also ${OPTIONS_ENV} as JSON).")(f)
    return click.option("--repo", "repo_path", envvar=REPO_ENV, metavar="PATH|URL",
                        help=f"Repository path or URL such as s3://bucket/prefix "
                             f"(default: ${REPO_ENV} or {default_repo_path()}).")(f)


def storage_options() -> dict:
    """The options of this command's --storage-option and $CHUNKREPO_STORAGE_OPTIONS."""
    ctx = click.get_current_context(silent=True)
    return parse_options(ctx.meta.get(_OPTIONS_KEY, ()) if ctx is not None else ())


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output: one JSON document.")(f)


def json_lines_option(f):
    """--json of a listing that streams: one JSON object per line (as restic's ls --json)."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Machine-readable output: one JSON object per line.")(f)


def open_repo(repo_path, create_default: bool = False) -> Repo:
    """Open the repository; with create_default, create the default one on first use."""
    path = repo_path or default_repo_path()
    if repo_path is None and create_default and not os.path.exists(os.path.join(path, "config")):
        if os.path.isdir(path) and os.listdir(path):
            raise NotARepository(f"{path} exists and is not a chunkrepo repository")
        repo = Repo.init(path)
        click.echo(f"chunkrepo: created repository {path}", err=True)
        return repo
    return Repo(path, storage_options=storage_options())


def print_json(obj) -> None:
    click.echo(json.dumps(obj, sort_keys=True))


def write_lines(lines) -> None:
    """Write many lines fast; names may hold surrogate-escaped bytes."""
    out = sys.stdout.buffer
    buf = []
    for line in lines:
        buf.append(line)
        if len(buf) >= 4096:
            out.write(("\n".join(buf) + "\n").encode("utf-8", "surrogateescape"))
            buf = []
    if buf:
        out.write(("\n".join(buf) + "\n").encode("utf-8", "surrogateescape"))
    out.flush()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
