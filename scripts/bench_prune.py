"""forget/prune on a repository of N backups of a changing tree.

    python3 scripts/bench_prune.py [--backups 100] [--files 100] [--change 3] [--keep 10]
                                   [--forget-oldest 1,50]

Each backup rewrites --change of the --files 1 MiB files with new random data.
Then, each in its own process (peak RSS per command): `forget --keep-last K`,
`prune`, and `prune` again (nothing to do).  With --forget-oldest, for each N
on a fresh copy of the same repository: `forget` of the N oldest backups by
id, then `prune` (cost against bytes freed).  Prints one JSON line.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time


def run(*args):
    """Run a chunkrepo command; (seconds, its own peak RSS in KiB, stdout)."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen([sys.executable, "-m", "chunkrepo", *args], stdout=out)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise SystemExit(f"chunkrepo {args[0]} failed with {p.returncode}")
        out.seek(0)
        return time.monotonic() - t0, ru.ru_maxrss, out.read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backups", type=int, default=100)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--change", type=int, default=3)
    ap.add_argument("--keep", type=int, default=10)
    ap.add_argument("--forget-oldest", default="", metavar="N,N,...",
                    help="also forget the N oldest backups (each on a copy of the repository), then prune")
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from chunkrepo import Repo

    work = tempfile.mkdtemp(prefix="chunkrepo-prune-bench-")
    src, repo_path = os.path.join(work, "src"), os.path.join(work, "repo")
    os.mkdir(src)
    rnd = random.Random(1)
    stamp = [time.time() - 10 * 86400]

    def write(i):
        with open(os.path.join(src, f"f{i:04d}"), "wb") as f:
            f.write(rnd.randbytes(1 << 20))
        stamp[0] += 60
        os.utime(os.path.join(src, f"f{i:04d}"), (stamp[0], stamp[0]))

    for i in range(a.files):
        write(i)
    t0 = time.monotonic()
    with Repo.init(repo_path) as repo:
        for n in range(a.backups):
            if n:
                for i in rnd.sample(range(a.files), a.change):
                    write(i)
            repo.backup([src])
    t_backups = time.monotonic() - t0

    def du():
        return du_of(repo_path)

    size0 = du()
    oldest = [_forget_oldest(repo_path, work, int(n)) for n in a.forget_oldest.split(",") if n]
    t_forget, rss_forget, _ = run("forget", "--repo", repo_path, "--keep-last", str(a.keep), "--json")
    t_prune, rss_prune, out = run("prune", "--repo", repo_path, "--json")
    rep = json.loads(out)
    t_noop, _, out2 = run("prune", "--repo", repo_path, "--json")
    t_check, _, _ = run("check", "--repo", repo_path, "--read-data")
    size1 = du()
    print(json.dumps({
        "backups": a.backups, "kept": a.keep, "repo_bytes_before": size0, "repo_bytes_after": size1,
        "backups_seconds": round(t_backups, 1), "forget_seconds": round(t_forget, 2),
        "prune_seconds": round(t_prune, 2), "prune_internal_seconds": rep["elapsed"],
        "bytes_freed": rep["bytes_freed"], "packs_deleted": rep["packs_deleted"],
        "packs_rewritten": rep["packs_rewritten"], "bytes_moved": rep["bytes_moved"],
        "blobs_freed": rep["blobs_freed"], "noop_prune_seconds": round(t_noop, 2),
        "noop_prune_internal_seconds": json.loads(out2)["elapsed"],
        "peak_rss_kib_forget": rss_forget, "peak_rss_kib_prune": rss_prune,
        "check_read_data_seconds": round(t_check, 1), "forget_oldest": oldest, "workdir": work}))


def _forget_oldest(repo_path, work, n):
    """forget the n oldest backups of a copy of the repository by id, then prune."""
    from chunkrepo import Repo
    copy = os.path.join(work, f"copy-{n}")
    shutil.copytree(repo_path, copy)
    with Repo(copy) as repo:
        ids = [r.id for r in repo.list_backups()[:n]]
    before = du_of(copy)
    t_forget, rss_forget, _ = run("forget", "--repo", copy, *ids)
    t_prune, rss_prune, out = run("prune", "--repo", copy, "--json")
    rep = json.loads(out)
    res = {"forgotten": n, "forget_seconds": round(t_forget, 2), "prune_seconds": round(t_prune, 2),
           "prune_internal_seconds": rep["elapsed"], "bytes_freed": rep["bytes_freed"],
           "packs_deleted": rep["packs_deleted"], "packs_rewritten": rep["packs_rewritten"],
           "bytes_moved": rep["bytes_moved"], "repo_bytes_before": before, "repo_bytes_after": du_of(copy),
           "peak_rss_kib_forget": rss_forget, "peak_rss_kib_prune": rss_prune}
    shutil.rmtree(copy)
    return res


def du_of(repo_path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(repo_path, "packs"))
               for f in fs)


if __name__ == "__main__":
    main()
