"""repository.index_dirs on real directories: which leftovers of a rebuild go, which stay,
and the switch's second rename when a reader got in between."""

import os

from chunkrepo.repository import index_dirs


def _index(path, name, tag):
    os.makedirs(path / name)
    (path / name / "data.mdb").write_text(tag)


def _names(path):
    return sorted(os.listdir(path))


def test_leftovers_go_only_while_index_is_there_and_never_an_old_one(tmp_path):
    for name in ("index.new-1", "index.ready-2", "index.replaced-3", "index.old-4"):
        _index(tmp_path, name, name)
    index_dirs.remove_leftovers(str(tmp_path))          # no index/: ready and replaced stay
    assert _names(tmp_path) == ["index.old-4", "index.ready-2", "index.replaced-3"]
    _index(tmp_path, "index", "live")
    _index(tmp_path, "index.new-5", "being built")
    index_dirs.remove_leftovers(str(tmp_path), keep=str(tmp_path / "index.new-5"))
    assert _names(tmp_path) == ["index", "index.new-5", "index.old-4"]


def test_opening_finishes_a_switch_cut_between_its_renames(tmp_path):
    _index(tmp_path, "index.replaced-7", "old")
    _index(tmp_path, "index.ready-7", "new")
    index_dirs.finish_switch(str(tmp_path))
    assert (tmp_path / "index" / "data.mdb").read_text() == "new"
    _index(tmp_path, "index.ready-8", "stale")
    index_dirs.finish_switch(str(tmp_path))             # index/ is there: nothing moves
    assert (tmp_path / "index" / "data.mdb").read_text() == "new"


def test_an_empty_index_a_reader_made_between_the_renames_is_moved_aside(tmp_path):
    _index(tmp_path, "index.ready-9", "new")
    _index(tmp_path, "index", "")                       # a reader's fresh, empty index
    index_dirs._rename_into_place(str(tmp_path), str(tmp_path / "index.ready-9"))
    assert (tmp_path / "index" / "data.mdb").read_text() == "new"
    index_dirs.remove_leftovers(str(tmp_path))
    assert _names(tmp_path) == ["index"]
