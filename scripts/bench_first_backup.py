#!/usr/bin/env python3
"""First backup, side by side: one or more chunkrepo checkouts and borg, alternately.

    python3 scripts/bench_first_backup.py --src /tmp/bench-corpus/s1-seed1 --rounds 3 \\
        --chunkrepo branch=/work/wt/me --chunkrepo main=/work/main --borg --workdir /tmp/me

Every round runs each contender once, in turn, into a fresh repository (so a
slow spell of the shared machine hits all of them alike), on a fresh `cp -a`
of the corpus as shared/bench/peers.py does it (warm page cache), timed by GNU time
(wall, user, sys, max RSS).  borg runs as shared/bench/peers.py runs it
(`borg init --encryption none`, `borg create --compression lz4`).  Prints the
medians, CPU seconds (user+sys, the steadier figure on a noisy box), the
repository size and each contender's ratio to borg.  With --unchanged it also
times a second, unchanged backup of chunkrepo (and borg) into the same repository.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import du, timed, work_dir  # noqa: E402


def contenders(args):
    out = []
    for spec in args.chunkrepo:
        name, _, tree = spec.partition("=")
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree or "."))
        exe = [sys.executable, "-P", "-m", "chunkrepo"]   # -P: the checkout on PYTHONPATH, not the cwd
        out.append((name, env,
                    lambda repo, exe=exe: exe + ["init", "--repo", repo],
                    lambda repo, src, exe=exe: exe + ["backup", "--repo", repo, src]))
    if args.borg:
        out.append(("borg", None,
                    lambda repo: ["borg", "init", "--encryption", "none", repo],
                    lambda repo, src: ["borg", "create", "--stats", "--compression", "lz4",
                                       f"{repo}::{{now:%Y-%m-%dT%H:%M:%S.%f}}", src]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="the pristine corpus (copied before each backup)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunkrepo", action="append", default=[], metavar="NAME=CHECKOUT",
                    help="a chunkrepo checkout to run with python -m chunkrepo (repeatable)")
    ap.add_argument("--borg", action="store_true")
    ap.add_argument("--unchanged", action="store_true", help="also time a second, unchanged backup")
    ap.add_argument("--workdir", default="/tmp")
    args = ap.parse_args()
    rows = {}
    for r in range(args.rounds):
        for name, env, init, backup in contenders(args):
            work = work_dir("bench-first-", args.workdir)
            repo, src = os.path.join(work, "repo"), os.path.join(work, "src")
            subprocess.run(["cp", "-a", args.src, src], check=True)
            e = dict(env or os.environ)
            if name == "borg":
                e.update(BORG_BASE_DIR=os.path.join(work, "home"), BORG_CACHE_DIR=os.path.join(work, "cache"),
                         BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                         BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
            try:
                timed(init(repo), e)
                w, u, s, rss, _ = timed(backup(repo, src), e)
                rows.setdefault((name, "first"), []).append((w, u, s, rss, du(repo)))
                print(f"round {r + 1} {name:10s} first     wall {w:6.2f}  cpu {u + s:6.2f} "
                      f"(u {u:.2f} s {s:.2f})  rss {rss:5.0f} MiB  repo {du(repo) / 2**20:.0f} MiB", flush=True)
                if args.unchanged:
                    w, u, s, rss, _ = timed(backup(repo, src), e)
                    rows.setdefault((name, "unchanged"), []).append((w, u, s, rss, du(repo)))
                    print(f"round {r + 1} {name:10s} unchanged wall {w:6.2f}  cpu {u + s:6.2f} "
                          f"rss {rss:5.0f} MiB", flush=True)
            finally:
                shutil.rmtree(work)
    print(f"\nmedians of {args.rounds} round(s), source {args.src}\n")
    print("| contender | step | wall s | cpu s (user+sys) | user s | sys s | max RSS MiB | repo MiB | wall / borg |")
    print("|---|---|---|---|---|---|---|---|---|")
    med = {k: [statistics.median(x[i] for x in v) for i in range(5)] for k, v in rows.items()}
    for (name, step), m in med.items():
        b = med.get(("borg", step))
        ratio = f"{m[0] / b[0]:.2f}" if b else ""
        print(f"| {name} | {step} | {m[0]:.2f} | {m[1] + m[2]:.2f} | {m[1]:.2f} | {m[2]:.2f} | {m[3]:.0f} "
              f"| {m[4] / 2**20:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
