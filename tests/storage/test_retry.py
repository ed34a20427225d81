"""RetryingStorage against real failures: an S3 endpoint (moto, and Ceph RGW when
CHUNKREPO_TEST_S3_ENDPOINT is set) behind a proxy that answers 503 SlowDown or
500, stalls past the client's timeout, or drops a connection halfway through an
upload (tests/storage/s3_fault_proxy.py); through s3fs and through the native
client (storage.s3_storage).

The clients' own retries (botocore's and s3fs's; the native client has none) are
switched off, so every retry seen here is RetryingStorage's.  The injected sleep
looks at the store between attempts: nothing half-written may be visible then.
"""

import errno
import logging
import socket
import threading

import pytest
from s3_fault_proxy import FaultProxy

from chunkrepo.errors import IntegrityError, NotFound, StorageError
from chunkrepo.storage.fsspec_storage import FsspecStorage
from chunkrepo.storage.open import open_fsspec, open_remote
from chunkrepo.storage.retry import RetryingStorage, is_transient
from chunkrepo.storage.s3_storage import S3Storage

PACK = bytes(range(256)) * (12 << 10)         # 3 MiB: one PUT, long enough to cut in half


@pytest.fixture(scope="module", params=["moto", pytest.param("ceph", marks=pytest.mark.ceph)])
def upstream(request):
    """kind, (endpoint_url, key, secret)"""
    return request.param, request.getfixturevalue(f"{request.param}_endpoint")


@pytest.fixture(scope="module")
def shared_proxy(upstream):
    p = FaultProxy(upstream[1][0], stall=3.0)
    yield p
    p.close()


@pytest.fixture
def s3(upstream, request):
    """A fresh bucket on the upstream."""
    return request.getfixturevalue(f"{upstream[0]}_s3")


@pytest.fixture
def proxy(shared_proxy):
    shared_proxy.reset()
    return shared_proxy


@pytest.fixture
def raw_fs(s3, proxy, make_s3fs):
    """s3fs through the proxy, with no retries of its own and a 1 s read timeout."""
    fs = make_s3fs(dict(s3, storage_options=dict(
        s3["storage_options"], client_kwargs=dict(s3["storage_options"]["client_kwargs"], endpoint_url=proxy.url))),
        config_kwargs={"retries": {"total_max_attempts": 1}, "read_timeout": 1, "connect_timeout": 1})
    fs.retries = 1
    return fs


_TIMEOUTS = {"read_timeout": 1, "connect_timeout": 1}


@pytest.fixture
def native_raw(s3, proxy, make_native):
    """The native client through the proxy, with a 1 s read timeout."""
    return make_native(s3, f"s3://{s3['bucket']}/repo", endpoint_url=proxy.url, config_kwargs=_TIMEOUTS)


@pytest.fixture(params=["s3fs", "native"])
def client(request):
    return request.param


@pytest.fixture
def inner(client, s3, request):
    """The repository folder through the proxy: s3fs's FsspecStorage or the native S3Storage."""
    if client == "native":
        return request.getfixturevalue("native_raw")
    return FsspecStorage(request.getfixturevalue("raw_fs"), f"{s3['bucket']}/repo")


@pytest.fixture
def direct(s3, make_s3fs):
    """The same store seen without the proxy: what really is there."""
    return FsspecStorage(make_s3fs(s3), f"{s3['bucket']}/repo")


class Sleeps(list):
    """The injected sleep: records each wait and runs a check of the store at that moment."""

    def __init__(self, check=None):
        super().__init__()
        self.check = check

    def __call__(self, seconds):
        self.append(seconds)
        if self.check is not None:
            self.check()


@pytest.fixture
def sleeps():
    return Sleeps()


@pytest.fixture
def store(inner, sleeps):
    return RetryingStorage(inner, attempts=4, base_delay=0.01, sleep=sleeps)


def _raised(fn) -> BaseException:
    try:
        fn()
    except Exception as e:
        return e
    raise AssertionError("no error")


# -- the classifier, on the exceptions s3fs really raises ------------------------------------------

@pytest.mark.parametrize("action,method", [("slowdown", "GET"), ("internal", "GET"), ("stall", "GET"),
                                           ("drop_upload", "PUT"), ("slowdown", "PUT")])
def test_transient_failures_classify_as_transient(s3, proxy, raw_fs, action, method):
    raw_fs.pipe_file(f"{s3['bucket']}/o", b"data")
    proxy.inject(action, method=method, times=2)     # aiohttp resends a dropped PUT once itself
    if method == "GET":
        e = _raised(lambda: raw_fs.cat_file(f"{s3['bucket']}/o"))
    else:
        e = _raised(lambda: raw_fs.pipe_file(f"{s3['bucket']}/p", PACK))
    assert is_transient(e), repr(e)


@pytest.mark.parametrize("action,method", [("slowdown", "GET"), ("internal", "GET"), ("stall", "GET"),
                                           ("drop_response", "GET"), ("drop_upload", "PUT"),
                                           ("slowdown", "PUT"), ("drop_response", "DELETE")])
def test_native_transient_failures_classify_as_transient(native_raw, proxy, action, method):
    native_raw.put("o", b"data")
    native_raw.put("keep", b"kept")
    proxy.inject(action, method=method)
    e = _raised({"GET": lambda: native_raw.get("o"), "PUT": lambda: _upload(native_raw, "p", PACK),
                 "DELETE": lambda: native_raw.delete("o")}[method])
    assert is_transient(e), repr(e)
    assert native_raw.get("keep", 1, 3) == b"ept"      # the client goes on, on a fresh connection


def _upload(storage, name, data):
    w = storage.create(name)
    w.write(data)
    w.commit()


def test_native_permanent_failures_classify_as_permanent(native_raw, proxy):
    native_raw.put("o", b"data")
    with pytest.raises(NotFound):
        native_raw.get("nope")
    assert native_raw.put_if_absent("o", b"x") is False           # 412: an answer, not an error
    proxy.inject("denied", method="GET")
    denied = _raised(lambda: native_raw.get("o"))
    assert isinstance(denied, StorageError) and "AccessDenied" in str(denied) and not is_transient(denied)
    assert native_raw.get("o", 2) == b"ta"


def test_native_short_body_is_transient(native_raw):
    """A connection that ends before the Content-Length: http.client's IncompleteRead."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    threading.Thread(target=serve, daemon=True).start()
    storage = S3Storage(native_raw.settings._replace(host=f"127.0.0.1:{listener.getsockname()[1]}"), "s3://x/y")
    e = _raised(lambda: storage.get("o"))
    listener.close()
    assert is_transient(e) and "IncompleteRead" in repr(e)


def test_slowdown_surfaces_as_ebusy_caused_by_client_error(s3, proxy, raw_fs):
    """What the classifier's docstring claims about s3fs."""
    raw_fs.pipe_file(f"{s3['bucket']}/o", b"data")
    proxy.inject("slowdown", method="GET")
    e = _raised(lambda: raw_fs.cat_file(f"{s3['bucket']}/o"))
    assert isinstance(e, OSError) and e.errno == errno.EBUSY
    assert e.__cause__.response["Error"]["Code"] == "SlowDown"


def test_permanent_failures_classify_as_permanent(s3, proxy, raw_fs):
    bucket = s3["bucket"]
    raw_fs.pipe_file(f"{bucket}/o", b"data")
    missing = _raised(lambda: raw_fs.cat_file(f"{bucket}/nope"))
    assert isinstance(missing, FileNotFoundError) and not is_transient(missing)
    exists = _raised(lambda: raw_fs.pipe_file(f"{bucket}/o", b"x", mode="create"))   # 412
    assert not is_transient(exists), repr(exists)
    proxy.inject("denied", method="GET")
    denied = _raised(lambda: raw_fs.cat_file(f"{bucket}/o"))
    assert isinstance(denied, PermissionError) and not is_transient(denied)


def test_refused_connection_is_transient(make_s3fs, make_native):
    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    native = make_native({"storage_options": {"key": "k", "secret": "s"}}, "s3://bucket/r",
                         endpoint_url=f"http://127.0.0.1:{port}", config_kwargs=_TIMEOUTS)
    assert is_transient(_raised(lambda: native.get("o")))
    fs = make_s3fs({"storage_options": {"key": "k", "secret": "s", "client_kwargs": {
        "endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"}}},
        config_kwargs={"retries": {"total_max_attempts": 1}, "connect_timeout": 1})
    fs.retries = 1
    e = _raised(lambda: fs.cat_file("bucket/o"))
    assert is_transient(e), repr(e)


def test_local_errors_are_permanent(tmp_path):
    from chunkrepo.storage import LocalStorage
    s = LocalStorage(str(tmp_path))
    assert not is_transient(_raised(lambda: s.get("nope")))
    assert not is_transient(OSError(errno.EIO, "I/O error"))
    assert not is_transient(StorageError("no space left on device"))
    assert is_transient(ConnectionResetError(errno.ECONNRESET, "reset"))
    try:                # an error of ours raised while handling a timeout is still ours
        try:
            raise TimeoutError("read timed out")
        except TimeoutError:
            raise IntegrityError("pack p1 does not match its hash")
    except IntegrityError as e:
        assert not is_transient(e)


# -- RetryingStorage over the faulty endpoint -------------------------------------------------------

def test_slowdown_put_is_retried_and_logged(store, direct, proxy, sleeps, caplog):
    proxy.inject("slowdown", method="PUT", times=3)
    with caplog.at_level(logging.WARNING, logger="chunkrepo.storage"):
        store.put("backups/b1", b"record")
    assert direct.get("backups/b1") == b"record"
    assert len(sleeps) == 3
    assert proxy.count("PUT") == 4
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 3 and "writing backups/b1" in retries[0].getMessage()


def test_internal_error_and_timeout_on_reads_are_retried(store, direct, proxy, sleeps):
    direct.put("packs/p1", PACK)
    proxy.inject("internal", method="GET", times=1)
    proxy.inject("stall", method="GET", times=1)
    assert store.get("packs/p1", 1000, 5000) == PACK[1000:6000]
    assert proxy.count("GET") == 3 and len(sleeps) == 2
    proxy.inject("slowdown", method="GET", times=2)
    assert sorted(store.list("packs")) == ["packs/p1"]


def test_upload_dropped_midway_is_retried_whole_and_never_half_visible(store, direct, proxy, sleeps, client):
    name = "packs/aa/aa01"
    seen = []

    def nothing_half_written():
        seen.append(direct.exists(name))
        assert list(direct.list("")) == []

    sleeps.check = nothing_half_written
    proxy.inject("drop_upload", method="PUT", times=2)   # aiohttp resends once, then gives up
    w = store.create(name)
    for i in range(0, len(PACK), 1 << 20):
        w.write(PACK[i:i + (1 << 20)])
    w.commit()
    assert seen == ([False] if client == "s3fs" else [False, False])     # the native client never resends
    assert direct.get(name) == PACK
    assert list(direct.list("")) == [name]
    assert proxy.count("PUT", "drop_upload") == 2 and proxy.count("PUT", "forward") == 1


def test_upload_that_keeps_failing_gives_up_and_leaves_nothing(store, direct, proxy, sleeps):
    proxy.inject("slowdown", method="PUT", times=100)
    w = store.create("packs/bb/bb01")
    w.write(PACK)
    with pytest.raises(StorageError, match="gave up after 4 attempts"):
        w.commit()
    assert proxy.count("PUT") == 4 and len(sleeps) == 3
    assert list(direct.list("")) == []


def test_delete_whose_answer_was_lost_succeeds(store, direct, proxy):
    """The first DELETE removes the object but its answer never arrives; the retry finds it gone."""
    direct.put("backups/b1", b"x")
    proxy.inject("drop_response", method="DELETE", times=2)
    store.delete("backups/b1")
    assert not direct.exists("backups/b1")
    with pytest.raises(NotFound):             # a first attempt that finds nothing still says so
        store.delete("backups/b1")


def test_lock_create_whose_answer_was_lost_counts_as_created(store, direct, proxy):
    proxy.inject("drop_response", method="PUT", times=2)
    assert store.put_if_absent("locks/writer", b"me, nonce 1") is True
    assert direct.get("locks/writer") == b"me, nonce 1"
    proxy.inject("drop_response", method="PUT", times=2)
    assert store.put_if_absent("locks/writer", b"another, nonce 2") is False
    assert direct.get("locks/writer") == b"me, nonce 1"


def test_permanent_errors_are_not_retried(store, direct, proxy, sleeps):
    with pytest.raises(NotFound):
        store.get("packs/missing")
    direct.put("locks/writer", b"theirs")
    assert store.put_if_absent("locks/writer", b"mine") is False
    assert proxy.count("PUT") == 1
    proxy.inject("denied", method="GET")
    direct.put("config", b"c")
    with pytest.raises(StorageError):
        store.get("config")
    assert proxy.count("GET") == 2          # the missing object's and the denied one: once each
    assert sleeps == []


def test_staged_upload_leaves_no_temporary_file(inner, direct, proxy, tmp_path):
    """The retry layer's staged file (anonymous: a killed backup leaves none behind) is what
    the storage uploads, again on a retry; nothing is left whether the upload succeeded
    after a retry or failed for good."""
    staging = tmp_path / "staging"
    staging.mkdir()
    seen = []
    inner.tmp_dir = str(staging)
    store = RetryingStorage(inner, attempts=2, base_delay=0.01,
                            sleep=lambda _: seen.append(len(list(staging.iterdir()))))
    proxy.inject("slowdown", method="PUT")
    w = store.create("packs/cc/cc01")
    w.write(PACK)
    w.commit()
    assert direct.get("packs/cc/cc01") == PACK
    assert seen == [0]                  # between attempts: no named copy
    proxy.inject("slowdown", method="PUT", times=2)
    w = store.create("packs/cc/cc02")
    w.write(b"x")
    with pytest.raises(StorageError, match="gave up"):
        w.commit()
    assert list(staging.iterdir()) == []


def _assert_only_retrying_storage_retries(store, proxy, caplog):
    """Two injected 503s on a GET: three GETs reach the store and RetryingStorage logs
    both retries (no client retried underneath it)."""
    store.base_delay = 0.01
    store.put("config", b"c")
    proxy.inject("slowdown", method="GET", times=2)
    with caplog.at_level(logging.WARNING, logger="chunkrepo.storage"):
        assert store.get("config") == b"c"
    assert proxy.count("GET") == 3
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2


def test_open_fsspec_leaves_retrying_to_retrying_storage(s3, proxy, caplog):
    """botocore and s3fs would absorb these 503s themselves (and multiply the attempts of a
    dead store): opened as a repository opens it, every retry is RetryingStorage's."""
    options = dict(s3["storage_options"],
                   client_kwargs=dict(s3["storage_options"]["client_kwargs"], endpoint_url=proxy.url))
    _assert_only_retrying_storage_retries(open_fsspec(f"s3://{s3['bucket']}/repo", options), proxy, caplog)


def test_open_remote_is_native_and_leaves_retrying_to_retrying_storage(s3, proxy, caplog):
    options = dict(s3["storage_options"], endpoint_url=proxy.url)
    store = open_remote(f"s3://{s3['bucket']}/repo", options)
    assert isinstance(store.inner, S3Storage)
    _assert_only_retrying_storage_retries(store, proxy, caplog)
