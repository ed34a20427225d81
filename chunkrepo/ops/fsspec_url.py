"""fsspec URLs as backup sources and restore targets: naming, opening, errors.

A URL (anything with ``://``: ``s3://bucket/data``, ``memory://x``,
``file:///srv``, ``sftp://host/path``) is opened with fsspec; its options
(``endpoint_url=...``) come from the caller, credentials from the URL's
filesystem as usual (the AWS variables for s3).  What the repository records
about a URL is its normalised form: scheme, host and path, never the user
name or password a URL may carry.
"""

import contextlib
import posixpath
import re
from typing import Dict, Tuple
from urllib.parse import urlsplit

from ..errors import ChunkrepoError, NotFound


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(s) -> bool:
    """A string starting with 'scheme://' (a local path never does, unless made to)."""
    return isinstance(s, str) and _SCHEME.match(s) is not None


def normalise(url: str) -> str:
    """scheme://host/path with no credentials, no '.', '..' or doubled or trailing slashes."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    path = posixpath.normpath("/" + parts.path.lstrip("/"))
    return f"{parts.scheme}://{host}{path if path != '/' else ''}"


@contextlib.contextmanager
def fs_errors(shown: str):
    """Any failure of the filesystem library as one ChunkrepoError naming the URL.

    fsspec implementations raise OSError subclasses, ValueError (unknown
    protocol) and ImportError (a missing optional package), and their client
    libraries their own exceptions (botocore's); all of them mean "this URL
    cannot be used", so all of them become a one-line error.
    """
    try:
        yield
    except ChunkrepoError:
        raise
    except FileNotFoundError:
        raise NotFound(f"{shown}: no such file, directory or bucket") from None
    except PermissionError as e:
        raise ChunkrepoError(f"{shown}: access denied ({one_line(e)})") from None
    except ImportError as e:
        raise ChunkrepoError(f"{shown}: the filesystem needs a package that is not installed "
                             f"({one_line(e)})") from None
    except Exception as e:
        raise ChunkrepoError(f"{shown}: {one_line(e)}") from None


_USERINFO = re.compile(r"[^/\s@:'\"]+:[^/\s@'\"]+@")    # user:password@ in a library's message


def one_line(e: BaseException) -> str:
    """The exception's message on one line, without credentials a URL may have carried."""
    text = _USERINFO.sub("", " ".join(str(e).split())) or type(e).__name__
    return text if len(text) < 300 else text[:297] + "..."


def open_url(url: str, options: Dict[str, object]) -> Tuple[object, str, str]:
    """(filesystem, its root path for url, the normalised url)."""
    shown = normalise(url)
    with fs_errors(shown):
        # imported here, not at the top: fsspec costs ~0.13 s to import, which
        # every command that never sees a URL would pay
        from fsspec.core import url_to_fs
        fs, path = url_to_fs(url, **options)
    if not path.strip("/") and path != "/":
        # s3:// alone is every bucket of the account: never what a backup (or a mirror!) means
        raise ChunkrepoError(f"{shown}: the URL names no bucket or directory")
    return fs, path.rstrip("/") or path, shown
