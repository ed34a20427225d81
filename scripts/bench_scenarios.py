#!/usr/bin/env python3
"""Scale scenarios of the performance issue, each printing a table.

    python3 scripts/bench_scenarios.py nightly [--nights 30] [--scale 0.5]
    python3 scripts/bench_scenarios.py bigfile [--gib 5]

nightly  thirty nights of the corpus's 1% change (shared/bench/make_corpus.py
         mutate, one round per night): per night the backup's wall time, what
         the repository grew by, and at the end `list-backups` and `ls` times.
bigfile  one file of --gib GiB of random data, backed up; then 100 bytes are
         inserted 1 MiB from its start and it is backed up again: the second
         backup must store at most 2 new chunks and read the file once
         (bytes_read = the file's size).

Both use the chunkrepo of this checkout (python -m chunkrepo) unless --exe.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import DEFAULT_SHARED, du, timed, work_dir  # noqa: E402


def _exe(args):
    return [args.exe] if args.exe else [sys.executable, "-m", "chunkrepo"]


def chunk_count(repo: str) -> int:
    """Chunks in the repository's index (read through the Python API)."""
    sys.path.insert(0, os.path.dirname(HERE))
    from chunkrepo import Repo
    with Repo(repo) as r:
        ix = r.repository.index
        with ix.read() as v:
            return v.txn.stat(ix.chunks)["entries"]


def nightly(args):
    exe = _exe(args)
    env = dict(os.environ)
    work = work_dir("chunkrepo-nightly-", args.workdir)
    src, repo = os.path.join(work, "src"), os.path.join(work, "repo")
    pristine = os.path.join(args.corpus_root, f"s{args.scale:g}-seed{args.seed}")
    if not os.path.isdir(pristine):
        subprocess.run([sys.executable, os.path.join(args.shared, "make_corpus.py"), "tree", pristine,
                        "--scale", str(args.scale), "--seed", str(args.seed)], check=True,
                       stdout=subprocess.DEVNULL)
    subprocess.run(["cp", "-a", pristine, src], check=True)
    timed(exe + ["init", "--repo", repo], env)
    rows = []
    wall, _, _, rss, _ = timed(exe + ["backup", "--repo", repo, src], env)
    size = du(repo)
    rows.append((0, wall, rss, size, size))
    for night in range(1, args.nights + 1):
        subprocess.run([sys.executable, os.path.join(args.shared, "make_corpus.py"), "mutate", src,
                        "--seed", str(args.seed), "--round", str(night)], check=True,
                       stdout=subprocess.DEVNULL)
        wall, _, _, rss, _ = timed(exe + ["backup", "--repo", repo, src], env)
        new = du(repo)
        rows.append((night, wall, rss, new - size, new))
        size = new
    lb = timed(exe + ["list-backups", "--repo", repo], env)
    ls = timed(exe + ["ls", "--repo", repo, "latest"], env)
    print(f"chunkrepo, {args.nights} nights of 1% change, corpus scale {args.scale:g} seed {args.seed}\n")
    print("| night | backup s | peak RSS MiB | repo growth MiB | repo MiB |")
    print("|---|---|---|---|---|")
    for night, wall, rss, grew, total in rows:
        print(f"| {night} | {wall:.2f} | {rss:.0f} | {grew / 2**20:.1f} | {total / 2**20:.0f} |")
    growth = [r[3] for r in rows[1:]]
    print(f"\nmean growth per night {sum(growth) / len(growth) / 2**20:.1f} MiB; "
          f"list-backups ({args.nights + 1} backups) {lb[0]:.2f} s; ls of the last {ls[0]:.2f} s")
    shutil.rmtree(work)


def _write_random(path: str, size: int, insert_at=None, insert=b"") -> None:
    """size bytes from a seeded generator (the same every time), with insert placed at insert_at."""
    import random
    rnd = random.Random(5)
    block = 8 << 20
    with open(path, "wb") as f:
        done = 0
        while done < size:
            data = rnd.randbytes(min(block, size - done))
            if insert_at is not None and done <= insert_at < done + len(data):
                k = insert_at - done
                data = data[:k] + insert + data[k:]
            f.write(data)
            done += min(block, size - done)
    old = time.time() - 3600       # older than the racy-timestamp window
    os.utime(path, (old, old))


def bigfile(args):
    exe = _exe(args)
    env = dict(os.environ)
    work = work_dir("chunkrepo-bigfile-", args.workdir)
    src, repo = os.path.join(work, "src"), os.path.join(work, "repo")
    os.mkdir(src)
    path = os.path.join(src, "big.img")
    size = int(args.gib * 2**30)
    _write_random(path, size)
    timed(exe + ["init", "--repo", repo], env)
    w1, _, _, rss1, out1 = timed(exe + ["backup", "--json", "--repo", repo, src], env, stdout=None)
    chunks1 = chunk_count(repo)
    _write_random(path, size, insert_at=1 << 20, insert=b"\xa5" * 100)
    w2, _, _, rss2, out2 = timed(exe + ["backup", "--json", "--repo", repo, src], env, stdout=None)
    chunks2 = chunk_count(repo)
    j1, j2 = json.loads(out1.splitlines()[-1]), json.loads(out2.splitlines()[-1])
    print(f"chunkrepo, one {args.gib:g} GiB file of random data, 100 bytes inserted at 1 MiB\n")
    print("| backup | wall s | peak RSS MiB | bytes read | new chunks | bytes new |")
    print("|---|---|---|---|---|---|")
    print(f"| first | {w1:.2f} | {rss1:.0f} | {j1['bytes_read']} | {chunks1} | {j1['bytes_new']} |")
    print(f"| after the insertion | {w2:.2f} | {rss2:.0f} | {j2['bytes_read']} | {chunks2 - chunks1} "
          f"| {j2['bytes_new']} |")
    ok = chunks2 - chunks1 <= 2 and j2["bytes_read"] == size + 100
    print(f"\nsecond backup: {chunks2 - chunks1} new chunks (target <= 2), read the file "
          f"{j2['bytes_read'] / (size + 100):.2f} times (target 1): {'OK' if ok else 'MISSED'}")
    shutil.rmtree(work)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["nightly", "bigfile"])
    ap.add_argument("--nights", type=int, default=30)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--gib", type=float, default=5)
    ap.add_argument("--shared", default=os.environ.get("CHUNKREPO_BENCH_SHARED", DEFAULT_SHARED))
    ap.add_argument("--corpus-root", default="/tmp/bench-corpus")
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--exe", help="chunkrepo executable (default: this checkout via python -m)")
    args = ap.parse_args()
    {"nightly": nightly, "bigfile": bigfile}[args.scenario](args)


if __name__ == "__main__":
    main()
