"""chunkrepo diff A URL: a backup against the live objects at an fsspec URL (memory:// and
S3 on moto's server; fixtures url_mem, url_moto, url_s3 in conftest.py)."""

import json

import pytest
from click.testing import CliRunner

from chunkrepo.cli.main import cli
from chunkrepo.errors import ChunkrepoError, NotFound

pytest.importorskip("fsspec")


def fill(fs, root, files: dict):
    for rel, data in files.items():
        fs.pipe(f"{root}/{rel}", data)


def changes(diff) -> dict:
    return {c.path.decode(): (c.change, c.fields) for c in diff}


SOURCE = {"a": b"alpha\n", "same": b"same size", "touch": b"touched",
          "d/x": b"x" * 5000, "d/y": b"y", "obj": b"becomes a prefix", "keep/k": b"k"}


def _change_memory(fs, root):
    fs.rm(f"{root}/a")
    fs.pipe(f"{root}/new", b"new object")
    fs.pipe(f"{root}/same", b"SAME SIZE")             # same size, new 'created': read, M
    fs.pipe(f"{root}/touch", b"touched")              # same bytes again: read, U (mtime)
    fs.rm(f"{root}/obj")
    fs.pipe(f"{root}/obj/inner", b"i")                # object -> prefix
    fs.rm(f"{root}/d", recursive=True)
    fs.pipe(f"{root}/d", b"prefix -> object")         # prefix -> object


def test_memory_url_unchanged_then_every_kind_of_change(repo, url_mem):
    fs, root = url_mem
    fill(fs, root, SOURCE)
    url = f"memory://{root}"
    bid = repo.backup([url]).id
    d = repo.diff(bid, url)
    assert list(d) == []
    assert (d.stats.equal, d.stats.files_read, d.stats.errors) == (len(SOURCE) + 2, 0, [])   # and the root: not counted

    _change_memory(fs, root)
    d = repo.diff(bid, url)
    got = changes(d)
    assert got == {
        "/a": ("-", ()),
        "/d": ("T", ()), "/d/x": ("-", ()), "/d/y": ("-", ()),
        "/new": ("+", ()),
        "/obj": ("T", ()), "/obj/inner": ("+", ()),
        "/same": ("M", ("content", "mtime")),
        "/touch": ("U", ("mtime",)),
    }
    assert list(got) == sorted(got)                   # tree order
    s = d.stats
    assert (s.added, s.removed, s.modified, s.metadata_only, s.type_changed) == (2, 3, 1, 1, 2)
    assert s.files_read == 2 and s.equal == 2          # keep/ and keep/k
    assert s.bytes_added == len("new object") + len("SAME SIZE") + len("prefix -> object") + 1


def test_content_reads_what_size_and_mtime_would_miss(repo, url_mem):
    fs, root = url_mem
    fill(fs, root, {"f": b"1234", "g": b"gg"})
    url = f"memory://{root}"
    bid = repo.backup([url]).id
    created = fs.info(f"{root}/f")["created"]
    fs.pipe(f"{root}/f", b"5678")
    fs.store[f"{root}/f"].created = created           # same size and mtime as backed up
    assert changes(repo.diff(bid, url)) == {}
    d = repo.diff(bid, url, content=True)
    assert changes(d) == {"/f": ("M", ("content",))}
    assert d.stats.files_read == 2


def test_subpath_and_a_url_below_the_backed_up_one(repo, url_mem):
    fs, root = url_mem
    fill(fs, root, SOURCE)
    url = f"memory://{root}"
    bid = repo.backup([url]).id
    _change_memory(fs, root)
    expected = {"/obj": ("T", ()), "/obj/inner": ("+", ())}
    assert changes(repo.diff(bid, url, "obj")) == expected
    assert changes(repo.diff(bid, url + "/obj")) == expected      # s3://b/data/obj is /obj
    assert changes(repo.diff(bid, url, "/keep")) == {}
    assert changes(repo.diff(bid, url, "a")) == {"/a": ("-", ())}
    with pytest.raises(NotFound, match="neither in backup"):
        list(repo.diff(bid, url, "nowhere"))
    with pytest.raises(NotFound, match="no such file"):
        repo.diff(bid, url + "-missing")


def test_cli_json_and_text(repo, url_mem):
    fs, root = url_mem
    fill(fs, root, {"a": b"a", "b": b"b"})
    url = f"memory://{root}"
    bid = repo.backup([url]).id
    fs.rm(f"{root}/a")
    fs.pipe(f"{root}/c/d", b"d")
    run = CliRunner().invoke
    r = run(cli, ["diff", "--repo", str(repo.path), bid, url, "--json"])
    assert r.exit_code == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert lines[:-1] == [{"path": "/a", "change": "-", "type": "f"},
                          {"path": "/c", "change": "+", "type": "d"},
                          {"path": "/c/d", "change": "+", "type": "f"}]
    summary = lines[-1]["summary"]
    assert (summary["only_left"], summary["only_right"], summary["different"], summary["equal"]) == (1, 2, 0, 1)
    r = run(cli, ["diff", "--repo", str(repo.path), bid, url, "c"])
    assert r.exit_code == 0 and r.stdout == "+    /c/\n+    /c/d\n"
    assert "added: 2, removed: 0" in r.stderr


# -- S3 -------------------------------------------------------------------------

def test_s3_etag_decides_and_content_reads(repo, url_s3):
    fs, opts, bucket = url_s3
    fill(fs, f"{bucket}/data", {"f": b"1" * 100, "g": b"g", "p/q": b"q", "k": b"object"})
    url = f"s3://{bucket}/data"
    bid = repo.backup([url], source_options=opts).id
    assert repo.get_backup(bid).paths == [url]
    d = repo.diff(bid, url, source_options=opts)
    assert list(d) == [] and d.stats.files_read == 0

    fs.pipe(f"{bucket}/data/f", b"2" * 100)           # same size, another ETag: M unread
    fs.rm(f"{bucket}/data/g")
    fs.pipe(f"{bucket}/data/h", b"h")
    fs.rm(f"{bucket}/data/p/q")
    fs.pipe(f"{bucket}/data/p", b"an object where a prefix was")
    fs.rm(f"{bucket}/data/k")
    fs.pipe(f"{bucket}/data/k/in", b"in")
    d = repo.diff(bid, url, source_options=opts)
    got = changes(d)
    assert got.pop("/f")[0] == "M"                     # and maybe mtime, if a second went by
    assert got == {"/g": ("-", ()), "/h": ("+", ()), "/k": ("T", ()), "/k/in": ("+", ()),
                   "/p": ("T", ()), "/p/q": ("-", ())}
    assert d.stats.files_read == 0

    d = repo.diff(bid, url, source_options=opts, content=True)
    assert changes(d)["/f"][1][0] == "content" and d.stats.files_read == 1     # the one left of equal size
    assert changes(repo.diff(bid, f"s3://{bucket}/data/k", source_options=opts)) == {
        "/k": ("T", ()), "/k/in": ("+", ())}


def test_s3_backup_against_another_url_where_it_was_restored(repo, url_s3, url_mem):
    fs, opts, bucket = url_s3
    files = {"a": b"a" * 10, "s/b": b"b" * 20}
    fill(fs, f"{bucket}/data", files)
    bid = repo.backup([f"s3://{bucket}/data"], source_options=opts).id
    mfs, root = url_mem
    repo.restore(bid, f"memory://{root}")
    # no ETags on memory://: other mtimes, so both objects are read; same chunks: U
    d = repo.diff(bid, f"memory://{root}")
    assert changes(d) == {"/a": ("U", ("mtime",)), "/s/b": ("U", ("mtime",))}
    assert d.stats.files_read == 2
    mfs.pipe(f"{root}/s/b", b"c" * 20)
    assert changes(repo.diff(bid, f"memory://{root}"))["/s/b"] == ("M", ("content", "mtime"))


def test_s3_shadowed_object_is_reported_not_compared(repo, url_s3):
    fs, opts, bucket = url_s3
    fill(fs, f"{bucket}/data", {"a": b"object a", "a/b": b"b"})
    url = f"s3://{bucket}/data"
    bid = repo.backup([url], source_options=opts).id
    d = repo.diff(bid, url, source_options=opts)
    assert list(d) == []
    assert d.stats.errors == [f"{url}/a: an object and a prefix share this name: not compared"]


def test_errors_are_one_line_without_credentials(repo, url_s3, url_mem):
    fs, opts, bucket = url_s3
    fill(fs, f"{bucket}/data", {"a": b"a"})
    bid = repo.backup([f"s3://{bucket}/data"], source_options=opts).id
    with pytest.raises(NotFound, match="no such file"):
        repo.diff(bid, f"s3://{bucket}-missing/data", source_options=opts)
    with pytest.raises(ChunkrepoError, match="names no bucket"):
        repo.diff(bid, "s3://", source_options=opts)
    with pytest.raises(ChunkrepoError, match="Protocol not known"):
        repo.diff(bid, "nosuchproto://x/y")

    run = CliRunner().invoke
    for args, message in [
        (["nosuchproto://user:hunter2@x/y"], "Protocol not known"),
        ([f"s3://user:hunter2@{bucket}-missing/data", "--source-option", f"endpoint_url={opts['endpoint_url']}",
          "--source-option", "key=testing", "--source-option", "secret=testing"], "chunkrepo: error: s3://"),
        ([f"memory://{url_mem[1]}", "--source-option", "novalue"], "expected key=value"),
    ]:
        r = run(cli, ["diff", "--repo", str(repo.path), bid, *args])
        assert r.exit_code == 1 and r.stderr.startswith("chunkrepo: error: ") and r.stderr.count("\n") == 1, \
            r.stderr
        assert message in r.stderr and "hunter2" not in r.stderr


def test_file_url_leaves_out_the_repository_and_reports_symlinks(tmp_path):
    from chunkrepo import Repo
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f\n")
    (src / "link").symlink_to("f")
    with Repo.init(src / "repo") as repo:             # backed up into itself: left out
        bid = repo.backup([f"file://{src}"]).id
        d = repo.diff(bid, f"file://{src}")
        assert list(d) == []
        assert d.stats.errors == [f"file://{src}/link: not a regular file or directory (other): not compared"]
        (src / "f").write_text("g\n")
        assert changes(repo.diff(bid, f"file://{src}")) == {"/f": ("M", ("content", "mtime"))}
