"""ops.url_place: where a URL is, and whether the repository is there."""

import os

from chunkrepo.ops.url_place import below, place, same_store


def test_s3_places_compare_bucket_prefix_and_endpoint(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    named = place("s3://b/x/", {"endpoint_url": "http://127.0.0.1:9000"})
    assert named.path == "b/x" and named.family == "s3"
    assert same_store(named, place("s3a://key:secret@b//x", {"client_kwargs": {"endpoint_url": "HTTP://127.0.0.1:9000/"}}))
    assert same_store(named, place("s3://b/x", {"endpoint_url": "http://127.0.0.1:9001"})) is False
    assert same_store(named, place("s3://b/x/y", {})) is None            # cannot tell: a restore refuses
    assert same_store(place("s3://b", {}), place("s3://b", {}))           # both AWS (or both a profile's)
    assert same_store(place("s3://b", {}), place("memory://b", {})) is False
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert same_store(named, place("s3://b", {}))


def test_containment_is_on_path_boundaries():
    assert below("b/repo/x", "b/repo") == "x"
    assert below("b/repo", "b/repo") == ""
    assert below("b/repo2", "b/repo") is None
    assert below("/srv/x", "/") == "srv/x"


def test_local_paths_and_file_urls_are_one_store_by_real_path(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    a, b = place(str(tmp_path / "real" / "repo")), place(f"file://{tmp_path}/link/")
    assert same_store(a, b) and below(a.path, b.path) == "repo"
    assert place("memory://x/y").path == place("memory:///x/y").path == "x/y"
