"""A storage on S3 (AWS, Ceph RGW, MinIO, moto): S3's REST API over http.client, signed with
Signature V4 (storage.sigv4); settings from storage.s3_config.

Why not s3fs: importing aiohttp, aiobotocore and botocore and building a client costs
~0.7 s of CPU per process (botocore parses S3's service model), more than an unchanged
backup does, and each request ~3.5 ms of CPU.  This client imports only the standard
library (~20 ms) and spends a fraction of that per request.

- Keep-alive connections, reused by whichever thread needs one (up to 16 kept idle,
  so pools that come and go do not pile up sockets); one found closed by the server
  while idle is replaced before use, never retried blindly.
- Reads are ranged GETs read straight into one bytes object; a response shorter than
  its Content-Length is http.client.IncompleteRead (a transient failure for
  storage.retry), a range the object does not hold whole is "truncated" (permanent).
- A small object (put, put_if_absent) is one PUT signed with its SHA-256.  A large one
  (create -> commit, upload_file) is staged in a local file and sent with sendfile(2)
  as UNSIGNED-PAYLOAD: packs are checked end to end by chunkrepo's own hashes, and
  hashing 32 MiB again only for the signature would cost ~30 ms of CPU per pack.
- put_if_absent is `If-None-Match: *` (412: it exists).
- Error answers raise S3Error (status, S3 code) as the cause of a StorageError;
  storage.retry classifies it; 404 is NotFound.
"""

import hashlib
import http.client
import os
import select
import threading
from typing import Iterator, List, Optional, Tuple
from xml.etree import ElementTree

from ..errors import NotFound, StorageError
from .s3_config import S3Settings
from .sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, canonical_query, sign, uri_encode
from .staged import StagedWriter

_XMLNS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_SEND_BLOCK = 1 << 20
_MAX_IDLE = 16            # connections kept open between requests (more threads than that are rare)


class S3Error(Exception):
    """An error answer of the S3 server."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code or status}: {message}" if message else (code or str(status)))
        self.status, self.code = status, code


def _error_of(status: int, body: bytes) -> S3Error:
    code = message = ""
    try:
        root = ElementTree.fromstring(body) if body else None
    except ElementTree.ParseError:
        root = None
    if root is not None:
        code, message = root.findtext("Code") or "", root.findtext("Message") or ""
    return S3Error(status, code or http.client.responses.get(status, str(status)), message)


def _readable(sock) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _S3Writer(StagedWriter):
    """A new object staged in a local temporary file; commit() uploads it."""

    def commit(self) -> None:
        try:
            self._f.flush()
            self._s.upload_fileobj(self._f, self._name)
        except OSError as e:
            raise StorageError(f"writing {self._name}: {e.strerror or e}") from None
        finally:
            self.abort()


class S3Storage:
    """Objects below s3://bucket/prefix."""

    def __init__(self, settings: S3Settings, url: str, tmp_dir: Optional[str] = None):
        self.settings = settings
        self.url = url
        self.tmp_dir = tmp_dir
        s = settings
        self._bucket_path = "" if s.virtual_host else "/" + uri_encode(s.bucket)
        self._key_prefix = s.prefix + "/" if s.prefix else ""
        self._idle: List[http.client.HTTPConnection] = []     # open connections no request uses
        self._idle_lock = threading.Lock()
        self._ssl_context = None

    # -- the wire -------------------------------------------------------------
    def _key(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad object name {name!r}")
        return self._key_prefix + name

    def _take(self) -> http.client.HTTPConnection:
        """An idle connection (the most recently used: the likeliest to be alive), or a new one."""
        with self._idle_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None and conn.sock is not None and _readable(conn.sock):
            conn.close()        # readable while idle: the server closed it (or broke the protocol)
        if conn is None:
            s = self.settings
            if s.scheme == "https":
                if self._ssl_context is None:
                    import ssl      # only https pays for it (an SSL context loads the system's CAs)
                    self._ssl_context = ssl.create_default_context(cafile=s.ca_bundle)
                conn = http.client.HTTPSConnection(s.host, timeout=s.connect_timeout, context=self._ssl_context,
                                                   blocksize=_SEND_BLOCK)
            else:
                conn = http.client.HTTPConnection(s.host, timeout=s.connect_timeout, blocksize=_SEND_BLOCK)
        if conn.sock is None:
            conn.connect()
            conn.sock.settimeout(self.settings.read_timeout)
        return conn

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._idle_lock:
            if len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _request(self, method: str, key: Optional[str], query: Tuple = (), headers: Optional[dict] = None,
                 body=None, payload_hash: str = EMPTY_SHA256, length: Optional[int] = None):
        """Send one request; returns (status, response headers, body bytes).

        body: bytes, or a file sent with sendfile (length bytes from its start).
        A 2xx body is read whole; an error body is read for its S3 code."""
        s = self.settings
        path = self._bucket_path + "/" + uri_encode(key) if key is not None else self._bucket_path or "/"
        headers = dict(headers or {}, host=s.host)
        if body is not None:
            headers["content-length"] = str(len(body) if length is None else length)
        headers.update(sign(method, path, list(query), headers, payload_hash, s.creds, s.region))
        target = path
        if query:
            target += "?" + canonical_query(list(query))
        conn = self._take()
        try:
            if body is None or length is None:
                conn.request(method, target, body=body, headers=headers)
            else:
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for k, v in headers.items():
                    conn.putheader(k, v)
                conn.endheaders()
                if length:
                    conn.sock.sendfile(body, 0, length)
            resp = conn.getresponse()
            data = resp.read()
        except BaseException:
            conn.close()        # a half-done exchange leaves the connection unusable
            raise
        self._give_back(conn)
        return resp.status, resp, data

    def _call(self, what: str, method: str, key: Optional[str], ok=(200,), missing: Optional[str] = None, **kw):
        """_request with the answer checked: NotFound on 404 if the object `missing` is
        looked for, else a StorageError caused by the S3Error.

        Network failures (OSError, http.client.HTTPException) pass through as they are,
        for storage.retry to classify."""
        status, resp, data = self._request(method, key, **kw)
        if status in ok:
            return status, resp, data
        if status == 404 and missing is not None:
            raise NotFound(f"object {missing} is missing")
        err = _error_of(status, data)
        raise StorageError(f"{what}: {err}") from err

    # -- writing --------------------------------------------------------------
    def create(self, name: str) -> _S3Writer:
        self._key(name)
        return _S3Writer(self, name)

    def put(self, name: str, data) -> None:
        data = bytes(data)
        self._call(f"writing {name}", "PUT", self._key(name), body=data,
                   payload_hash=hashlib.sha256(data).hexdigest())

    def put_if_absent(self, name: str, data) -> bool:
        """Create the object unless it exists (If-None-Match: *); False if it did."""
        data = bytes(data)
        status, _, _ = self._call(f"creating {name}", "PUT", self._key(name), ok=(200, 412),
                                  headers={"if-none-match": "*"}, body=data,
                                  payload_hash=hashlib.sha256(data).hexdigest())
        return status == 200

    def upload_file(self, local_file: str, name: str) -> None:
        """Store a local file's contents under name (storage.retry stages large objects)."""
        with open(local_file, "rb") as f:
            self.upload_fileobj(f, name)

    def upload_fileobj(self, f, name: str) -> None:
        length = os.fstat(f.fileno()).st_size
        self._call(f"writing {name}", "PUT", self._key(name), body=f, length=length,
                   payload_hash=UNSIGNED_PAYLOAD)

    def ensure_root(self) -> None:
        """Create the bucket if it is missing."""
        s = self.settings
        status, _, data = self._request("HEAD", None)
        if status == 200:
            return
        if status != 404:
            err = _error_of(status, data)
            raise StorageError(f"looking for bucket {s.bucket}: {err}") from err
        body = b""
        if s.region != "us-east-1":
            body = (f'<CreateBucketConfiguration xmlns="{_XMLNS[1:-1]}"><LocationConstraint>{s.region}'
                    f"</LocationConstraint></CreateBucketConfiguration>").encode()
        self._call(f"creating bucket {s.bucket}", "PUT", None, body=body, payload_hash=hashlib.sha256(body).hexdigest())

    # -- reading --------------------------------------------------------------
    def get(self, name: str, offset: int = 0, length: Optional[int] = None) -> bytes:
        if length == 0:
            return b""
        headers = {}
        if length is not None:
            headers["range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            headers["range"] = f"bytes={offset}-"
        status, _, data = self._call(f"reading {name}", "GET", self._key(name), ok=(200, 206, 416),
                                     missing=name, headers=headers)
        if status == 416:       # bytes=N- of an N-byte object, or any range past the end
            if length is None and offset >= self.size(name):
                return b""
            raise StorageError(f"object {name} is truncated: wanted {length} bytes at {offset}")
        if status == 200 and headers:       # a server that ignored the range
            data = data[offset:] if length is None else data[offset:offset + length]
        if length is not None and len(data) != length:
            raise StorageError(f"object {name} is truncated: wanted {length} bytes at {offset}, got {len(data)}")
        return data

    def size(self, name: str) -> int:
        _, resp, _ = self._call(f"reading {name}", "HEAD", self._key(name), missing=name)
        return int(resp.getheader("content-length"))

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
            return True
        except NotFound:
            return False

    def list(self, prefix: str) -> Iterator[str]:
        start = len(self._key_prefix)
        query = [("list-type", "2"), ("prefix", self._key_prefix + (prefix.strip("/") + "/" if prefix else ""))]
        names: List[str] = []
        token = None
        while True:
            q = query + [("continuation-token", token)] if token else query
            status, _, data = self._call(f"listing {prefix or 'the repository'}", "GET", None, ok=(200, 404),
                                         query=tuple(q))
            if status == 404:       # no bucket: nothing below any prefix
                return iter(())
            try:
                root = ElementTree.fromstring(data)
            except ElementTree.ParseError as e:
                raise http.client.HTTPException(f"unreadable listing: {e}") from None
            names.extend(k.text[start:] for k in root.iter(_XMLNS + "Key"))
            token = root.findtext(_XMLNS + "NextContinuationToken")
            if root.findtext(_XMLNS + "IsTruncated") != "true" or not token:
                break
        return iter(sorted(names))

    # -- deleting -------------------------------------------------------------
    def delete(self, name: str) -> None:
        if not self.exists(name):       # S3 deletes a missing key without complaint
            raise NotFound(f"object {name} is missing")
        self._call(f"deleting {name}", "DELETE", self._key(name), ok=(200, 204), missing=name)

    def stale_temporaries(self, prefix: str) -> list:
        """None on an object store: an upload is one PUT."""
        return []

    def remove_stale_temporaries(self, prefix: str) -> int:
        return 0

    def close(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
