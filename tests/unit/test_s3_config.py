"""storage.s3_config: where the native S3 client connects and as whom; storage.open: when s3fs
is used instead, and that it says why."""

import logging

import pytest

from chunkrepo.errors import StorageError
from chunkrepo.storage.fsspec_storage import FsspecStorage
from chunkrepo.storage.open import open_remote
from chunkrepo.storage.s3_config import Unsupported, resolve
from chunkrepo.storage.s3_storage import S3Storage


@pytest.fixture
def home(tmp_path):
    """An environment whose ~/.aws files live in tmp_path (none written yet)."""
    return {"AWS_CONFIG_FILE": str(tmp_path / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials")}


def test_options_env_and_defaults(home):
    s = resolve("s3://bucket/some/prefix/", {"key": "k", "secret": "s", "endpoint_url": "http://127.0.0.1:7480"},
                env=home)
    assert (s.scheme, s.host, s.bucket, s.prefix, s.virtual_host) == (
        "http", "127.0.0.1:7480", "bucket", "some/prefix", False)
    assert (s.region, s.creds, s.connect_timeout, s.read_timeout) == ("us-east-1", ("k", "s", None), 60.0, 60.0)
    env = dict(home, AWS_ACCESS_KEY_ID="ek", AWS_SECRET_ACCESS_KEY="es", AWS_SESSION_TOKEN="et",
               AWS_ENDPOINT_URL="https://other:9000", AWS_ENDPOINT_URL_S3="https://s3.example:8443",
               AWS_DEFAULT_REGION="eu-west-1")
    s = resolve("s3://b", {"config_kwargs": {"read_timeout": 5}}, env=env)
    assert (s.scheme, s.host, s.prefix, s.region, s.creds, s.read_timeout) == (
        "https", "s3.example:8443", "", "eu-west-1", ("ek", "es", "et"), 5.0)
    s = resolve("s3://b/p", {"client_kwargs": {"endpoint_url": "http://h:1", "region_name": "r1",
                                               "aws_access_key_id": "ck", "aws_secret_access_key": "cs"}},
                env=dict(env, AWS_REGION="r2"))
    assert (s.host, s.region, s.creds.key) == ("h:1", "r1", "ck")
    assert resolve("s3://b/p", {}, env=dict(env, AWS_REGION="r2")).region == "r2"


def test_aws_itself_is_virtual_hosted_unless_the_bucket_has_dots(home):
    env = dict(home, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_DEFAULT_REGION="eu-west-1")
    s = resolve("s3://my-bucket/p", {}, env=env)
    assert (s.scheme, s.host, s.virtual_host) == ("https", "my-bucket.s3.eu-west-1.amazonaws.com", True)
    s = resolve("s3://my.bucket/p", {}, env=env)
    assert (s.host, s.virtual_host) == ("s3.eu-west-1.amazonaws.com", False)


def test_profiles_from_the_aws_files(home, tmp_path):
    (tmp_path / "credentials").write_text("[default]\naws_access_key_id = dk\naws_secret_access_key = ds\n"
                                          "[work]\naws_access_key_id = wk\naws_secret_access_key = ws\n"
                                          "aws_session_token = wt\n")
    (tmp_path / "config").write_text("[default]\nregion = ap-south-1\n[profile work]\nregion = eu-north-1\n"
                                     "endpoint_url = http://minio:9000\n[profile role]\nrole_arn = arn:x\n"
                                     "[profile cfgkeys]\naws_access_key_id = ck\naws_secret_access_key = cs\n")
    s = resolve("s3://b/p", {}, env=home)
    assert (s.creds, s.region) == (("dk", "ds", None), "ap-south-1")
    s = resolve("s3://b/p", {}, env=dict(home, AWS_PROFILE="work"))
    assert (s.creds, s.region, s.host) == (("wk", "ws", "wt"), "eu-north-1", "minio:9000")
    assert resolve("s3://b/p", {}, env=dict(home, AWS_PROFILE="cfgkeys")).creds.key == "ck"
    # the environment's keys come before AWS_PROFILE's, but not before a profile option (botocore's order)
    env = dict(home, AWS_PROFILE="work", AWS_ACCESS_KEY_ID="ek", AWS_SECRET_ACCESS_KEY="es")
    assert resolve("s3://b/p", {}, env=env).creds.key == "ek"
    assert resolve("s3://b/p", {"profile": "work"}, env=env).creds.key == "wk"
    with pytest.raises(Unsupported, match="profile 'role' uses role_arn"):
        resolve("s3://b/p", {}, env=dict(home, AWS_PROFILE="role"))


@pytest.mark.parametrize("options, env, reason", [
    ({"anon": True}, {}, "storage option 'anon'"),
    ({"client_kwargs": {"verify": False}}, {}, "client_kwargs.verify"),
    ({"config_kwargs": {"retries": {"max_attempts": 3}}}, {}, "config_kwargs.retries"),
    ({"key": "k"}, {}, "without a secret"),
    ({}, {}, "no access key"),
    ({}, {"AWS_WEB_IDENTITY_TOKEN_FILE": "/t"}, "web identity"),
    ({"key": "k", "secret": "s", "endpoint_url": "ftp://h"}, {}, "is not http"),
    ({"key": "k", "secret": "s", "endpoint_url": "http://rgw.lan:7480"}, {"http_proxy": "http://p:3128"},
     r"a proxy for http \(\$http_proxy\)"),
    ({"key": "k", "secret": "s"}, {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "example.com"}, "HTTPS_PROXY"),
])
def test_what_the_native_client_does_not_do(home, options, env, reason):
    with pytest.raises(Unsupported, match=reason):
        resolve("s3://b/p", options, env=dict(home, **env))


def test_proxies_that_do_not_apply_and_ca_bundle(home):
    opts = {"key": "k", "secret": "s", "endpoint_url": "https://rgw.lan:7480"}
    env = dict(home, HTTP_PROXY="http://p:3128", NO_PROXY="localhost,.lan", AWS_CA_BUNDLE="/etc/ca.pem")
    s = resolve("s3://b/p", opts, env=env)       # no proxy for https; rgw.lan is excluded anyway
    assert (s.host, s.ca_bundle) == ("rgw.lan:7480", "/etc/ca.pem")
    assert resolve("s3://b/p", opts, env=dict(env, HTTPS_PROXY="http://p:3128")).ca_bundle == "/etc/ca.pem"


def test_open_remote_chooses_and_says_why(home, monkeypatch, caplog):
    for k, v in home.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    opts = {"key": "k", "secret": "s", "endpoint_url": "http://127.0.0.1:1"}
    assert isinstance(open_remote("s3://b/p", opts).inner, S3Storage)
    with caplog.at_level(logging.WARNING, logger="chunkrepo.storage"):
        assert isinstance(open_remote("s3://b/p", dict(opts, client="s3fs")).inner, FsspecStorage)
        assert caplog.records == []
        assert isinstance(open_remote("s3://b/p", dict(opts, anon=False)).inner, FsspecStorage)
    assert [r.getMessage() for r in caplog.records] == [
        "chunkrepo: s3://b/p: using s3fs: storage option 'anon' is not one the native S3 client knows "
        "(client=s3fs chooses it without this warning)"]
    with pytest.raises(StorageError, match="native S3 client cannot be used: storage option 'anon'"):
        open_remote("s3://b/p", dict(opts, anon=False, client="native"))
    with pytest.raises(StorageError, match="client='boto'"):
        open_remote("s3://b/p", dict(opts, client="boto"))
