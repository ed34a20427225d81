"""rebuild-index recreates the index from the store alone, equal to the original."""

import os
import shutil
import subprocess
import sys

from chunkrepo import Repo
from chunkrepo.repository.config import Config
from tests.conftest import age, write_random


def _state(repo):
    with repo.repository.index.read() as v:
        chunks = {k: e.refcount for k, e in v.all_chunks()}
        trees = {k: e.refcount for k, e in v.all_trees()}
        backups = dict(v.backups())
    return chunks, trees, backups


def test_rebuild_from_packs_and_records(tmp_path):
    path = tmp_path / "repo"
    Repo.init(path, Config(pack_size=1 << 20)).close()
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(6):
        write_random(src / "d" / f"f{i}", 500_000, seed=i)
        age(src / "d" / f"f{i}")
    (src / "small").write_text("small\n")
    with Repo(path) as repo:
        first = repo.backup([src])
        (src / "d" / "f2").unlink()
        write_random(src / "d" / "new", 700_000, seed=50)
        second = repo.backup([src])
        repo.forget([first.id])                 # some blobs are garbage now
        before = _state(repo)
    shutil.rmtree(path / "index")
    p = subprocess.run([sys.executable, "-m", "chunkrepo", "rebuild-index", "--repo", str(path)],
                       capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    assert "rebuilt" in p.stderr.decode()
    assert not [n for n in os.listdir(path) if n.startswith("index.old")]
    with Repo(path) as repo:
        assert _state(repo) == before
        assert repo.check(read_data=True).ok
        for name in ("f0", "f5", "new"):
            with repo.open_file(second.id, src / "d" / name) as f:
                assert f.read() == (src / "d" / name).read_bytes()
        repo.prune()                            # the rebuilt garbage set is usable
        assert repo.check(read_data=True).ok
