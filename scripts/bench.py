#!/usr/bin/env python3
"""The nightly-cycle benchmark: chunkrepo alone, step by step, on a generated corpus.

    python3 scripts/bench.py --scale 0.5            # the 762 MiB / 30k-file corpus
    python3 scripts/bench.py --scale 0.13 --runs 3  # quick, medians of 3

Steps: init, backup (first), backup (unchanged), mutate 1%, backup (after the
change), list-backups, ls, tar, restore, check, check --read-data.  Each step is
one `chunkrepo` process timed by GNU time (wall, user, sys, max RSS).  The
corpus comes from shared/bench/make_corpus.py and is generated once per
(scale, seed) under --corpus-root, then copied fresh for every run.  For the
side-by-side comparison with restic and borg use shared/bench/peers.py.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "bench"))



def work_dir(prefix: str, parent=None) -> str:
    """A fresh temporary directory under parent (made if missing), or under the system's."""
    if parent:
        os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=parent)

def timed(cmd, env, stdout=subprocess.DEVNULL):
    """Run cmd under GNU time; return (wall, user, sys, maxrss MiB, stdout text)."""
    fd, tfile = tempfile.mkstemp()
    os.close(fd)
    try:
        p = subprocess.run(["/usr/bin/time", "-o", tfile, "-f", "%e %U %S %M"] + cmd, env=env,
                           stdout=subprocess.PIPE if stdout is None else stdout,
                           stderr=subprocess.PIPE)
        if p.returncode not in (0, 3):
            sys.exit(f"step failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr.decode(errors='replace')}")
        wall, user, sys_, rss = open(tfile).read().split()[-4:]
    finally:
        os.unlink(tfile)
    out = p.stdout.decode() if p.stdout else ""
    return float(wall), float(user), float(sys_), int(rss) / 1024, out


def du(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def corpus(args):
    src = os.path.join(args.corpus_root, f"s{args.scale:g}-seed{args.seed}")
    if not os.path.isdir(src):
        subprocess.run([sys.executable, os.path.join(args.shared, "make_corpus.py"), "tree", src,
                        "--scale", str(args.scale), "--seed", str(args.seed)], check=True,
                       stdout=subprocess.DEVNULL)
    return src


def one_run(args, pristine):
    work = work_dir("chunkrepo-bench-", args.workdir)
    src, repo = os.path.join(work, "src"), os.path.join(work, "repo")
    subprocess.run(["cp", "-a", pristine, src], check=True)
    env = dict(os.environ)
    exe = [args.exe] if args.exe else [sys.executable, "-m", "chunkrepo"]
    rows = {}

    def step(name, *cmd, stdout=subprocess.DEVNULL):
        rows[name] = timed(exe + list(cmd), env, stdout)
        return rows[name][4]

    step("init", "init", "--repo", repo)
    step("backup 1 (first)", "backup", "--repo", repo, src, stdout=None)
    rows["backup 1 (first)"] += (du(repo),)
    step("backup 2 (unchanged)", "backup", "--repo", repo, src, stdout=None)
    rows["backup 2 (unchanged)"] += (du(repo),)
    subprocess.run([sys.executable, os.path.join(args.shared, "make_corpus.py"), "mutate", src,
                    "--seed", str(args.seed), "--round", "1"], check=True, stdout=subprocess.DEVNULL)
    out = step("backup 3 (after 1% change)", "backup", "--repo", repo, src, stdout=None)
    rows["backup 3 (after 1% change)"] += (du(repo),)
    last = out.strip().splitlines()[-1]
    step("list-backups", "list-backups", "--repo", repo)
    step("ls", "ls", "--repo", repo, last)
    tarfile_ = os.path.join(work, "out.tar")
    step("tar", "tar", "--repo", repo, last, "-o", tarfile_)
    os.unlink(tarfile_)
    step("restore", "restore", "--repo", repo, last, "--target", os.path.join(work, "restored"))
    step("check", "check", "--repo", repo)
    step("check --read-data", "check", "--repo", repo, "--read-data")
    shutil.rmtree(work)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--shared", default=os.environ.get("CHUNKREPO_BENCH_SHARED", DEFAULT_SHARED),
                    help="folder with make_corpus.py")
    ap.add_argument("--corpus-root", default="/tmp/bench-corpus")
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--exe", help="chunkrepo executable (default: this checkout via python -m)")
    args = ap.parse_args()
    pristine = corpus(args)
    runs = [one_run(args, pristine) for _ in range(args.runs)]
    print(f"chunkrepo nightly cycle, corpus scale {args.scale:g} seed {args.seed}, "
          f"median of {args.runs} run(s)\n")
    print("| step | wall s | user s | sys s | max RSS MiB | repo MiB |")
    print("|---|---|---|---|---|---|")
    for name in runs[0]:
        vals = [r[name] for r in runs]
        med = [statistics.median(v[i] for v in vals) for i in range(4)]
        repo_mib = f"{statistics.median(v[5] for v in vals) / 2**20:.0f}" if len(vals[0]) > 5 else ""
        print(f"| {name} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | {med[3]:.0f} | {repo_mib} |")


if __name__ == "__main__":
    main()
