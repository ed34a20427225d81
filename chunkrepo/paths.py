"""Where chunkrepo keeps things by default, resolved at call time (never at import).

    repository   $CHUNKREPO_REPO, else $XDG_DATA_HOME/chunkrepo/repo (~/.local/share/chunkrepo/repo)
    local cache  $CHUNKREPO_CACHE_DIR, else $XDG_CACHE_HOME/chunkrepo (~/.cache/chunkrepo)
    index cache  $CHUNKREPO_INDEX_CACHE, else LOCAL_CACHE/index: the indexes of remote repositories
"""

import os

REPO_ENV = "CHUNKREPO_REPO"
CACHE_ENV = "CHUNKREPO_CACHE_DIR"
INDEX_CACHE_ENV = "CHUNKREPO_INDEX_CACHE"


def default_repo_path() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "chunkrepo", "repo")


def repo_path(explicit=None) -> str:
    """The repository to use: the argument, else $CHUNKREPO_REPO, else the default."""
    if explicit is not None:
        return os.fspath(explicit)
    return os.environ.get(REPO_ENV) or default_repo_path()


def cache_dir() -> str:
    """The local snapshot cache: $CHUNKREPO_CACHE_DIR, else the user's cache dir."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return os.path.abspath(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.join(base, "chunkrepo"))


def index_cache_dir() -> str:
    """Where the indexes of repositories on object stores are cached, one folder per repository id."""
    env = os.environ.get(INDEX_CACHE_ENV)
    if env:
        return os.path.abspath(env)
    return os.path.join(cache_dir(), "index")
