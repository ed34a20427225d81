"""A repository location -> its storage: a local path, or a URL any fsspec filesystem knows.

    /srv/backups, relative/path, file:///srv/backups   a local directory (LocalStorage)
    s3://bucket/prefix                                 S3Storage, the native S3 client (else s3fs)
    memory://name, gcs://..., ...                      FsspecStorage on fsspec.filesystem(scheme)

s3:// goes to the native client (storage.s3_storage) unless the options or the
environment ask for something only s3fs does (storage.s3_config says what it
knows): then to s3fs, with a warning naming the reason.  The option client=s3fs
chooses s3fs, client=native insists on the native client (an error if it cannot).

Storage options (passed to fsspec.filesystem) come from $CHUNKREPO_STORAGE_OPTIONS
(a JSON object) and then from explicit 'key=value' items (the CLI's repeatable
--storage-option; a value that parses as JSON is taken as JSON, so
client_kwargs={"region_name":"eu-west-1"} works).  s3fs itself reads the usual
AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
AWS_DEFAULT_REGION, AWS_PROFILE).
"""

import json
import logging
import os
import re
from typing import Iterable, Optional

from ..errors import NotARepository, StorageError
from .fsspec_storage import FsspecStorage
from .retry import RetryingStorage, with_retries

log = logging.getLogger("chunkrepo.storage")

OPTIONS_ENV = "CHUNKREPO_STORAGE_OPTIONS"
_S3_SCHEMES = ("s3", "s3a")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")


def is_url(location: str) -> bool:
    return bool(_URL.match(location)) and not location.startswith("file://")


def local_path(location: str) -> str:
    """The absolute path of a local location (a path or a file:// URL)."""
    if location.startswith("file://"):
        location = location[len("file://"):]
    return os.path.abspath(location)


def parse_options(items: Iterable[str] = ()) -> dict:
    """$CHUNKREPO_STORAGE_OPTIONS, then 'key=value' items, as keyword arguments."""
    opts: dict = {}
    env = os.environ.get(OPTIONS_ENV)
    if env:
        try:
            opts = json.loads(env)
        except ValueError as e:
            raise StorageError(f"{OPTIONS_ENV} is not valid JSON: {e}") from None
        if not isinstance(opts, dict):
            raise StorageError(f"{OPTIONS_ENV} must be a JSON object of storage options")
    opts.update(parse_items(items))
    return opts


def parse_items(items: Iterable[str]) -> dict:
    """'key=value' strings as filesystem options: true/false/none (any case) are those
    values, a value that reads as JSON (3, {...}) is that value, anything else the string.
    A dotted key is a nested one: config_kwargs.connect_timeout=5 is
    {"config_kwargs": {"connect_timeout": 5}} (merged with the other config_kwargs.* items)."""
    opts: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        path = [k.strip() for k in key.split(".")]
        if not sep or not all(path):
            raise StorageError(f"bad storage option {item!r}: expected key=value")
        low = value.lower()
        if low in _WORDS:
            parsed = _WORDS[low]
        else:
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = value
        into = opts
        for k in path[:-1]:
            into = into.setdefault(k, {})
            if not isinstance(into, dict):
                raise StorageError(f"bad storage option {item!r}: {k} is not a group of options")
        into[path[-1]] = parsed
    return opts


_WORDS = {"true": True, "false": False, "none": None, "null": None}


def open_remote(url: str, options: Optional[dict] = None, tmp_dir: Optional[str] = None) -> RetryingStorage:
    """The storage of a remote repository (s3:// natively where it can), retrying transient
    failures.  options None: those of $CHUNKREPO_STORAGE_OPTIONS."""
    options = parse_options() if options is None else dict(options)
    m = _URL.match(url)
    client = options.pop("client", None)
    if client not in (None, "native", "s3fs"):
        raise StorageError(f"{url}: storage option client={client!r}: expected native or s3fs")
    if not m or m.group(1).lower() not in _S3_SCHEMES or client == "s3fs":
        return open_fsspec(url, options, tmp_dir)
    if not m.group(2).strip("/"):
        raise NotARepository(f"{url}: the URL names no bucket or folder")
    # only s3:// pays for http.client and ssl (~20 ms), as only URLs pay for fsspec
    from .s3_config import Unsupported, resolve
    from .s3_storage import S3Storage
    try:
        settings = resolve(url, options)
    except Unsupported as e:
        if client == "native":
            raise StorageError(f"{url}: the native S3 client cannot be used: {e}") from None
        log.warning("chunkrepo: %s: using s3fs: %s (client=s3fs chooses it without this warning)", url, e)
        return open_fsspec(url, options, tmp_dir)
    return with_retries(S3Storage(settings, url, tmp_dir))


def open_fsspec(url: str, options: Optional[dict] = None, tmp_dir: Optional[str] = None) -> RetryingStorage:
    """An FsspecStorage for a URL, retrying transient failures (storage.retry); one-line
    errors for unknown schemes and bad options.

    options None: those of $CHUNKREPO_STORAGE_OPTIONS."""
    import fsspec     # only remote repositories pay for importing it

    m = _URL.match(url)
    if not m:
        raise NotARepository(f"{url!r} is not a URL")
    scheme, rest = m.group(1).lower(), m.group(2)
    if not rest.strip("/"):
        raise NotARepository(f"{url}: the URL names no bucket or folder")
    options = parse_options() if options is None else options
    s3 = scheme in _S3_SCHEMES
    try:
        fs = fsspec.filesystem(scheme, **(_one_attempt(options) if s3 else options))
    except ValueError as e:
        raise StorageError(f"{url}: unknown storage scheme {scheme!r} ({e})") from None
    except ImportError as e:
        raise StorageError(f"{url}: scheme {scheme!r} needs a package that is not installed ({e})") from None
    except TypeError as e:
        raise StorageError(f"{url}: bad storage option for {scheme!r}: {e}") from None
    if s3:
        fs.retries = 1      # s3fs's own retry loop (default 5 attempts): see _one_attempt
    return with_retries(FsspecStorage(fs, url, tmp_dir))


def _one_attempt(options: dict) -> dict:
    """The options with botocore's retries off unless they set some.

    RetryingStorage is the one retry layer: botocore (up to 5 attempts) and s3fs
    (5) retrying underneath it would multiply its worst case to 6 x 5 x 5
    requests and minutes of backoff before a dead store is reported."""
    config = options.get("config_kwargs")
    if config is not None and not isinstance(config, dict):
        return options          # fsspec reports the bad option
    config = dict(config or {})
    config.setdefault("retries", {"total_max_attempts": 1})
    return dict(options, config_kwargs=config)
