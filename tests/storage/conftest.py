"""Every storage implementation, plain and wrapped in RetryingStorage, as one `storage` fixture."""

import uuid

import fsspec
import pytest

from chunkrepo.storage import FsspecStorage, LocalStorage
from chunkrepo.storage.retry import RetryingStorage
from chunkrepo.storage.s3_config import resolve
from chunkrepo.storage.s3_storage import S3Storage

BACKENDS = ["local", "memory", "file", "moto", "native-moto", pytest.param("ceph", marks=pytest.mark.ceph),
            pytest.param("native-ceph", marks=pytest.mark.ceph)]
LOCK_BACKENDS = BACKENDS[1:]     # the stores with put_if_absent (a local repository locks with flock)


@pytest.fixture
def make_s3fs():
    """make_s3fs(info, **s3fs_options): an s3fs filesystem for an S3 fixture's dict (fsspec caches
    instances by their arguments, so tests on one endpoint share a client)."""
    s3fs = pytest.importorskip("s3fs")

    def make(info, **kw):
        opts = dict(info["storage_options"])
        opts.update(kw)
        return s3fs.S3FileSystem(**opts)
    return make


def open_native(info, url, **options):
    """The native S3 client (storage.s3_storage) for an S3 fixture's dict, as storage.open makes it
    (options override the fixture's; the environment is not consulted)."""
    return S3Storage(resolve(url, dict(info["storage_options"], **options), env={}), url)


@pytest.fixture
def make_native():
    """make_native(info, url, **options): open_native as a fixture."""
    return open_native


def open_backend(kind, request, tmp_path):
    """A fresh, empty storage of the given kind (cleaned up by the fixtures it uses)."""
    if kind == "local":
        return LocalStorage(str(tmp_path / "store"))
    if kind == "file":
        return FsspecStorage(fsspec.filesystem("file"), str(tmp_path / "store"))
    if kind == "memory":
        fs = fsspec.filesystem("memory")
        root = f"/chunkrepo-test-{uuid.uuid4().hex}"
        request.addfinalizer(lambda: fs.rm(root, recursive=True) if fs.exists(root) else None)
        return FsspecStorage(fs, f"memory://{root}")
    info = request.getfixturevalue(f"{kind.removeprefix('native-')}_s3")
    if kind.startswith("native-"):
        return open_native(info, f"s3://{info['bucket']}/store")
    fs = request.getfixturevalue("make_s3fs")(info)
    return FsspecStorage(fs, f"{info['bucket']}/store")


@pytest.fixture
def open_storage(request, tmp_path):
    """open_storage(kind): a fresh storage of that kind ("local", "memory", "file", "moto", "ceph",
    "native-moto", "native-ceph": S3 through s3fs or through the native client)."""
    return lambda kind: open_backend(kind, request, tmp_path)


def _opened(request, tmp_path):
    s = open_backend(request.param, request, tmp_path)
    request.addfinalizer(s.close)
    return request.param, s


def _as_param(request, s):
    return s if request.param == "plain" else RetryingStorage(s)


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    """(kind, the storage unwrapped) for each implementation."""
    return _opened(request, tmp_path)


@pytest.fixture(params=["plain", "retrying"])
def storage(request, backend):
    """Each implementation, as it is and wrapped in RetryingStorage."""
    return _as_param(request, backend[1])


@pytest.fixture(params=LOCK_BACKENDS)
def lock_backend(request, tmp_path):
    return _opened(request, tmp_path)


@pytest.fixture(params=["plain", "retrying"])
def lock_storage(request, lock_backend):
    """Each implementation with a conditional create, as it is and wrapped in RetryingStorage."""
    return _as_param(request, lock_backend[1])
