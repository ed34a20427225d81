"""A pack file that cannot be opened (EACCES): restore names the pack, not only the file
it was restoring, and check calls the backups' paths unreadable, not damaged (an I/O
error is not damage: docs/format.md, Repair)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from chunkrepo import Repo
from tests.conftest import age, write_random

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _without_dac():
    """The argv prefix of a process that permission bits bind: none for a user other than
    root; for root, setpriv dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("as root, this test drops CAP_DAC_OVERRIDE with setpriv (util-linux), not installed")
    prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
    p = subprocess.run([*prefix, "true"], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here: {p.stderr.decode().strip()}")
    return prefix


def _run(prefix, *args):
    p = subprocess.run([*prefix, sys.executable, "-m", "chunkrepo", *args], capture_output=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_an_unreadable_pack_is_named_and_not_called_damage(tmp_path):
    prefix = _without_dac()
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        write_random(src / f"f{i}", 200_000, seed=i)
        age(src / f"f{i}")
    repo = tmp_path / "repo"
    with Repo.init(repo) as r:
        bid = r.backup([src]).id
        with r.repository.index.read() as v:
            (pid,) = {e.pack for _, e in v.all_chunks()}
    pack = repo / "packs" / pid.hex()[:2] / pid.hex()
    pack.chmod(0)
    try:
        code, out, err = _run(prefix, "restore", bid, str(src), "--target", str(tmp_path / "t"), "--repo", str(repo))
        lines = err.splitlines()
        assert code == 1 and len(lines) == 4 and lines[-1] == "chunkrepo: error: restore finished with 3 errors"
        for i, line in enumerate(sorted(lines[:3])):
            assert line == f"chunkrepo: {src}/f{i}: object packs/{pid.hex()[:2]}/{pid.hex()} cannot be read: " \
                           f"Permission denied; the file was not restored"
        code, out, err = _run(prefix, "check", "--read-data", "--json", "--repo", str(repo))
        report = json.loads(out)
        assert code == 1 and report["damaged"] == {}
        assert report["unreadable"] == {bid: [f"{src}/f{i}" for i in range(3)]}
        code, out, err = _run(prefix, "check", "--read-data", "--repo", str(repo))
        assert code == 1 and "is damaged" not in err
        assert f"backup {bid} cannot be read in full: 3 paths have data in packs that could not be read " \
               f"(an I/O error, not damage" in err
    finally:
        pack.chmod(0o644)
    code, out, err = _run((), "check", "--read-data", "--repo", str(repo))
    assert code == 0, err
