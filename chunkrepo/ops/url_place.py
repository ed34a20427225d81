"""Is a URL the repository's own place?  (A backup leaves the repository out of a source
that holds it; a restore refuses a target that holds it or lies inside it.)

A place is a store and a path in it:

    /srv/x, file:///srv/x     ("file", None)            the real path (symlinks resolved)
    s3://bucket/p, s3a://...  ("s3", endpoint)          "bucket/p"
    memory://x/y, gcs://b/p   (the protocol, None)      "x/y", "b/p" (host and path)

Two S3 places are in one store when their endpoints are equal (endpoint_url, then
client_kwargs.endpoint_url, $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, normalised) or
neither names one (both AWS, or both a profile's endpoint).  When only one names
an endpoint nobody can tell, and a caller that could lose data takes them as one.
Containment is on path boundaries: s3://b/repo holds s3://b/repo/x, not s3://b/repo2.
"""

import os
import posixpath
from typing import NamedTuple, Optional
from urllib.parse import urlsplit

_FAMILY = {"s3a": "s3", "local": "file", "gs": "gcs"}
_DEFAULT_PORT = {"http": 80, "https": 443}


class Place(NamedTuple):
    family: str
    endpoint: Optional[str]
    path: str


def place(location: str, options: Optional[dict] = None) -> Place:
    """Where a local path or URL is; options: its filesystem's (endpoint_url=...)."""
    parts = urlsplit(location) if "://" in location else None
    family = _FAMILY.get(parts.scheme.lower(), parts.scheme.lower()) if parts else "file"
    if family == "file":
        path = parts.path if parts else location
        return Place("file", None, os.path.realpath(os.path.abspath(path)))
    host = parts.netloc.rpartition("@")[2]
    path = posixpath.normpath("/" + host + "/" + parts.path.lstrip("/")).strip("/")
    endpoint = _s3_endpoint(options or {}) if family == "s3" else None
    return Place(family, endpoint, path)


def _s3_endpoint(options: dict) -> Optional[str]:
    ck = options.get("client_kwargs")
    raw = (options.get("endpoint_url") or (ck.get("endpoint_url") if isinstance(ck, dict) else None)
           or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    if not raw:
        return None
    e = urlsplit(str(raw).strip())
    scheme = e.scheme.lower()
    try:
        port = e.port or _DEFAULT_PORT.get(scheme)
    except ValueError:        # not a port: compare the text
        return str(raw).strip().rstrip("/").lower()
    return f"{scheme}://{(e.hostname or '').lower()}:{port}{e.path.rstrip('/')}"


def same_store(a: Place, b: Place) -> Optional[bool]:
    """True: one store; False: two; None: cannot tell (one S3 endpoint named, one not)."""
    if a.family != b.family:
        return False
    if a.endpoint == b.endpoint:
        return True
    return None if a.endpoint is None or b.endpoint is None else False


def below(inner: str, outer: str) -> Optional[str]:
    """inner's path relative to outer ('' when equal), None when it is not inside it."""
    if inner == outer:
        return ""
    top = outer.rstrip("/") + "/"
    return inner[len(top):] if inner.startswith(top) else None


def repo_place(repo) -> Place:
    return place(repo.path, repo.storage_options)
