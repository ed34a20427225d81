"""Fixtures of the URL tests (test_fsspec_source, test_diff_url): a memory:// tree and S3
on moto's server on loopback.  (Named url_*: tests/conftest.py may hold other S3 fixtures.)"""

import logging
import uuid

import pytest


@pytest.fixture(scope="session")
def url_moto():
    """The endpoint of moto's S3 server, in this process, for the whole session."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    srv = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    yield f"http://{host}:{port}"
    srv.stop()


@pytest.fixture
def url_s3(url_moto):
    """(filesystem, options, a fresh bucket name) on the moto server."""
    import s3fs
    opts = {"endpoint_url": url_moto, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    bucket = "b-" + uuid.uuid4().hex[:12]
    fs.mkdir(bucket)
    return fs, opts, bucket


@pytest.fixture
def url_mem():
    """(the memory filesystem, a fresh root path in it), removed after the test."""
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    root = "/t-" + uuid.uuid4().hex[:12]
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)
