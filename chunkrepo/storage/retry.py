"""Retries with backoff: a storage wrapper for object stores, whose requests fail now and then.

A transient failure (S3 503 SlowDown or 500 InternalError, a request timeout, a
connection reset or dropped) is retried after an exponential backoff with full
jitter, up to a number of attempts, with one warning logged per retry.  A
permanent one (a missing object, a refused permission, a failed precondition, a
bad request) is raised at once.

A large object is staged in a local temporary file and its upload is retried as
a whole from that file: the inner storage's commit() is atomic, so a failed
attempt leaves nothing half-written under the name.

How failures surface through s3fs (2026.9; measured with moto and Ceph RGW):
an S3 error response becomes an OSError whose __cause__ is botocore's
ClientError (SlowDown/503 -> errno EBUSY, InternalError/500 -> EREMOTEIO,
RequestTimeout -> TimeoutError, NoSuchKey -> FileNotFoundError, AccessDenied ->
PermissionError, 412 -> FileExistsError or OSError(EINVAL)); a network failure
arrives as the botocore exception itself (ReadTimeoutError,
ConnectionClosedError, EndpointConnectionError: all HTTPClientError) or as an
aiohttp one.  A storage that turns these into StorageError keeps them as its
__cause__ or __context__, which is where is_transient() looks.

Through the native client (storage.s3_storage): an error answer is an S3Error
(status and S3 code, classified as botocore's); a network failure is the
standard library's own (socket timeouts and resets, http.client's
IncompleteRead for a body cut short, RemoteDisconnected, a garbled answer).
"""

import errno
import logging
import os
import random
import socket
import sys
import time
from typing import Callable, Iterator, Optional

from ..errors import ChunkrepoError, NotFound, StorageError
from .local import LocalStorage
from .staged import StagedWriter

log = logging.getLogger("chunkrepo.storage")

_TRANSIENT_CODES = {
    "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling",
    "ThrottlingException", "TooManyRequests", "RequestLimitExceeded", "RequestThrottled",
    "ConditionalRequestConflict",       # 409: a conditional PUT raced another; AWS says retry
}
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_TRANSIENT_ERRNOS = {
    errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.EPIPE,
    errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTUNREACH,
}
_PERMANENT = (NotFound, FileNotFoundError, PermissionError, FileExistsError,
              IsADirectoryError, NotADirectoryError, ValueError, TypeError)
_COPY_PIECE = 4 << 20


def _s3_verdict(code, status) -> bool:
    return code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS


def _network_error_types() -> tuple:
    """The standard library's, botocore's and aiohttp's connection errors (only loaded modules
    can have raised any): a cut or garbled HTTP answer, a failed name lookup, a TLS stream cut."""
    types: tuple = (socket.gaierror,)
    http_client = sys.modules.get("http.client")
    if http_client is not None:
        types += (http_client.HTTPException,)
    ssl = sys.modules.get("ssl")
    if ssl is not None:
        types += (ssl.SSLEOFError, ssl.SSLZeroReturnError)
    bc = sys.modules.get("botocore.exceptions")
    if bc is not None:      # ReadTimeoutError, ConnectionClosedError, EndpointConnectionError, ...
        types += (bc.HTTPClientError, bc.IncompleteReadError)
    parsers = sys.modules.get("botocore.parsers")
    if parsers is not None:     # a throttled server's garbled answer (s3fs retries these too)
        types += (parsers.ResponseParserError,)
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        types += (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
    return types


def _verdict(e: BaseException) -> Optional[bool]:
    """True transient, False permanent, None: this exception does not tell."""
    if isinstance(e, _PERMANENT):
        return False
    if isinstance(e, ChunkrepoError) and not isinstance(e, StorageError):    # IntegrityError, ...
        return False
    if isinstance(e, (TimeoutError, ConnectionError)):     # socket timeouts, resets, broken pipes
        return True
    s3 = sys.modules.get(f"{__package__}.s3_storage")      # the native client's S3Error
    if s3 is not None and isinstance(e, s3.S3Error):
        return _s3_verdict(e.code, e.status)
    response = getattr(e, "response", None)                 # botocore's ClientError
    if isinstance(response, dict) and "Error" in response:
        return _s3_verdict(response["Error"].get("Code"),
                           (response.get("ResponseMetadata") or {}).get("HTTPStatusCode"))
    if isinstance(e, _network_error_types()):
        return True
    if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
        return True
    return None


def is_transient(e: BaseException) -> bool:
    """Whether retrying the operation that raised e may succeed.

    Looks at e, then at what caused it (__cause__, else __context__); the first
    exception that tells decides.  Unknown errors are permanent."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        v = _verdict(e)
        if v is not None:
            return v
        e = e.__cause__ or e.__context__
    return False


class _RetryingWriter(StagedWriter):
    """Stages the object in an anonymous local file (a killed process leaves none
    behind); commit() uploads it, retried whole.

    An inner storage with upload_file (FsspecStorage) uploads the staged file
    itself, by its /proc/self/fd name; elsewhere it gets a copy through its writer."""

    def _copy(self) -> None:
        self._f.seek(0)
        w = self._s.inner.create(self._name)
        try:
            while True:
                piece = self._f.read(_COPY_PIECE)
                if not piece:
                    break
                w.write(piece)
            w.commit()
        except BaseException:
            w.abort()
            raise

    def _staged_path(self) -> Optional[str]:
        """A name the inner storage can open the staged file by, if it takes one.

        upload_file is looked up on the class: a wrapper passing unknown attributes
        through (FaultyStorage) must not hand over its inner storage's."""
        if getattr(type(self._s.inner), "upload_file", None) is None:
            return None
        path = f"/proc/self/fd/{self._f.fileno()}"
        return path if os.path.exists(path) else None

    def commit(self) -> None:
        try:
            path = self._staged_path()
            if path is None:
                self._s.call(f"uploading {self._name}", self._copy)
                return
            try:
                self._f.flush()
            except OSError as e:
                raise StorageError(f"staging {self._name}: {e.strerror or e}") from None
            self._s.call(f"uploading {self._name}", self._s.inner.upload_file, path, self._name)
        finally:
            self.abort()


class RetryingStorage:
    """Passes every operation to inner, retrying transient failures.

    sleep is injectable so tests need not wait; delays grow as base_delay * 2**n,
    capped at max_delay, and the actual wait is uniform in [0, that] (full jitter)."""

    def __init__(self, inner, attempts: int = 6, base_delay: float = 0.2, max_delay: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep, tmp_dir: Optional[str] = None):
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self.attempts, self.base_delay, self.max_delay = attempts, base_delay, max_delay
        self._sleep = sleep
        self.tmp_dir = tmp_dir if tmp_dir is not None else getattr(inner, "tmp_dir", None)

    def delay(self, retry: int) -> float:
        """The wait before retry number retry (1, 2, ...)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (retry - 1)))

    def call(self, what: str, fn: Callable, *args):
        """fn(*args), retried while it fails transiently."""
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(*args)
            except Exception as e:
                if not is_transient(e):
                    raise
                if attempt == self.attempts:
                    raise StorageError(f"{what}: {e} (gave up after {attempt} attempts)") from e
                wait = self.delay(attempt)
                log.warning("chunkrepo: %s failed (%s: %s); retry %d of %d in %.2f s",
                            what, type(e).__name__, e, attempt, self.attempts - 1, wait)
                self._sleep(wait)

    # -- writing --------------------------------------------------------------
    def create(self, name: str) -> _RetryingWriter:
        return _RetryingWriter(self, name)

    def put(self, name: str, data: bytes) -> None:
        self.call(f"writing {name}", self.inner.put, name, data)

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """As inner's.  A retry that finds the object holding exactly data counts as
        created: the attempt that failed on the wire had created it (lock objects
        carry a nonce, so another writer's never matches)."""
        data = bytes(data)
        tries = 0

        def attempt() -> bool:
            nonlocal tries
            tries += 1
            created = self.inner.put_if_absent(name, data)
            if created or tries == 1:
                return created
            return self.inner.get(name) == data
        return self.call(f"creating {name}", attempt)

    def delete(self, name: str) -> None:
        """A retried delete that finds the object gone succeeds: the failed attempt removed it."""
        tries = 0

        def attempt() -> None:
            nonlocal tries
            tries += 1
            try:
                self.inner.delete(name)
            except NotFound:
                if tries == 1:
                    raise
        self.call(f"deleting {name}", attempt)

    # -- reading --------------------------------------------------------------
    def get(self, name: str, offset: int = 0, length: Optional[int] = None) -> bytes:
        return self.call(f"reading {name}", self.inner.get, name, offset, length)

    def size(self, name: str) -> int:
        return self.call(f"reading {name}", self.inner.size, name)

    def exists(self, name: str) -> bool:
        return self.call(f"looking for {name}", self.inner.exists, name)

    def list(self, prefix: str) -> Iterator[str]:
        names = self.call(f"listing {prefix or 'the repository'}", lambda: list(self.inner.list(prefix)))
        return iter(names)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, attr):      # remove_stale_temporaries, root, fs, ...
        return getattr(self.inner, attr)


def with_retries(storage, **kw):
    """The storage as a repository should use it: retries for everything that is not
    a local directory (a local disk's errors are not transient)."""
    if isinstance(storage, (LocalStorage, RetryingStorage)):
        return storage
    return RetryingStorage(storage, **kw)
