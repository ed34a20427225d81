import contextlib
import functools
import logging
import hashlib
import os
import random
import subprocess
import uuid

import pytest

from chunkrepo import Repo


@pytest.fixture
def repo(tmp_path):
    r = Repo.init(tmp_path / "repo")
    yield r
    r.close()


def write_random(path, size, seed=0):
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rnd.randbytes(n))
            left -= n
    return path


@pytest.fixture
def make_random():
    return write_random


def age(path, seconds=10):
    """Push a file's mtime into the past so the racy-timestamp rule trusts it."""
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9), follow_symlinks=False)


# -- S3 endpoints: moto in-process, and Ceph RGW when CHUNKREPO_TEST_S3_ENDPOINT names one --------
# Each fixture yields a dict: endpoint_url, key, secret, bucket (fresh and empty, removed after
# the test), url ("s3://bucket") and storage_options (what fsspec.filesystem("s3", ...) takes).

S3_ENDPOINT_ENV = "CHUNKREPO_TEST_S3_ENDPOINT"        # e.g. http://127.0.0.1:7480 (scripts/ceph-up.sh)
S3_KEY_ENV, S3_SECRET_ENV = "CHUNKREPO_TEST_S3_KEY", "CHUNKREPO_TEST_S3_SECRET"


def s3_info(endpoint_url, key, secret, bucket):
    return {
        "endpoint_url": endpoint_url, "key": key, "secret": secret, "bucket": bucket,
        "url": f"s3://{bucket}",
        "storage_options": {"key": key, "secret": secret,
                            "client_kwargs": {"endpoint_url": endpoint_url, "region_name": "us-east-1"}},
    }


@functools.lru_cache(maxsize=None)       # a client costs ~0.3 s of CPU to build: one per endpoint
def _boto_client(endpoint_url, key, secret):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=key, aws_secret_access_key=secret,
                        region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))


def _fresh_bucket(endpoint_url, key, secret):
    """A new empty bucket; emptied and removed when the generator resumes."""
    client = _boto_client(endpoint_url, key, secret)
    bucket = f"chunkrepo-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    yield s3_info(endpoint_url, key, secret, bucket)
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    client.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="session")
def moto_endpoint():
    """(endpoint_url, key, secret) of an in-process moto S3 server on a free loopback port."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.WARNING)     # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}", "testing", "testing"
    server.stop()


@pytest.fixture(scope="session")
def ceph_endpoint():
    """(endpoint_url, key, secret) of the Ceph RGW that CHUNKREPO_TEST_S3_ENDPOINT names."""
    endpoint = os.environ.get(S3_ENDPOINT_ENV)
    if not endpoint:
        pytest.skip(f"Ceph RGW tests need {S3_ENDPOINT_ENV} (start one with scripts/ceph-up.sh)")
    return endpoint, os.environ.get(S3_KEY_ENV, "testkey"), os.environ.get(S3_SECRET_ENV, "testsecret")


@pytest.fixture
def moto_s3(moto_endpoint):
    yield from _fresh_bucket(*moto_endpoint)


@pytest.fixture
def ceph_s3(ceph_endpoint):
    yield from _fresh_bucket(*ceph_endpoint)


def pytest_collection_modifyitems(items):
    """Tests that use the Ceph endpoint carry the `ceph` marker (-m 'not ceph' leaves them out)."""
    for item in items:
        if {"ceph_s3", "ceph_endpoint"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ceph)


def sha256_tree(root) -> dict:
    """{path: SHA-256 digest} of every regular file below root (paths as os.walk gives them)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for n in files:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[p] = hashlib.sha256(f.read()).digest()
    return out


@contextlib.contextmanager
def small_tmpfs(mnt, size: str):
    """A tmpfs of size (e.g. "8m") mounted at mnt while the block runs: a disk that
    fills up.  Skips the test where it cannot be mounted (not root, no mount)."""
    os.makedirs(mnt, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
