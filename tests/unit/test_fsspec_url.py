"""URL naming and filesystem options: what a URL backup records, and how option strings parse."""

import pytest

from chunkrepo.errors import ChunkrepoError
from chunkrepo.ops.fsspec_url import is_url, normalise, one_line
from chunkrepo.storage.open import parse_items


@pytest.mark.parametrize("url, expected", [
    ("s3://bucket/data/", "s3://bucket/data"),
    ("s3://AKIA:secret@bucket/data", "s3://bucket/data"),
    ("s3://bucket", "s3://bucket"),
    ("s3://bucket/", "s3://bucket"),
    ("memory://b/./data//x/../y", "memory://b/data/y"),
    ("file:///tmp/x/", "file:///tmp/x"),
    ("sftp://user:pw@host:2222/srv", "sftp://host:2222/srv"),
])
def test_normalise_drops_credentials_and_redundant_segments(url, expected):
    assert normalise(url) == expected


def test_is_url_needs_a_scheme_at_the_start():
    assert is_url("s3://b/x") and is_url("file:///tmp") and is_url("memory://x")
    assert not is_url("/srv/a://b") and not is_url("relative/path") and not is_url(b"s3://b")


def test_parse_items_converts_booleans_none_and_integers():
    assert parse_items(["endpoint_url=http://h:1/x=y", "anon=true", "use_ssl=False", "n=3",
                          "profile=none"]) == {
        "endpoint_url": "http://h:1/x=y", "anon": True, "use_ssl": False, "n": 3, "profile": None}
    with pytest.raises(ChunkrepoError, match="expected key=value"):
        parse_items(["novalue"])


def test_parse_items_nests_dotted_keys():
    assert parse_items(["config_kwargs.connect_timeout=5", "config_kwargs.read_timeout=7",
                        "client_kwargs.region_name=eu-west-1", "anon=false"]) == {
        "config_kwargs": {"connect_timeout": 5, "read_timeout": 7},
        "client_kwargs": {"region_name": "eu-west-1"}, "anon": False}
    with pytest.raises(ChunkrepoError, match="not a group of options"):
        parse_items(["a=1", "a.b=2"])
    with pytest.raises(ChunkrepoError, match="expected key=value"):
        parse_items(["a..b=1"])


def test_one_line_hides_credentials():
    assert one_line(OSError("bucket AKIA:s3cr%2Fet@bkt/x\nnot found")) == "bucket bkt/x not found"
