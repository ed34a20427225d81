#!/usr/bin/env python3
"""The many-files scenario: cost must grow with what changed, not with the host.

    python3 scripts/bench_many_files.py --files 10000 100000 1000000

For each N: a tree of N small files (100 files per directory, 40-2,000 bytes,
generated once under --root and reused), then: first backup, unchanged backup,
`ls` of the last backup, with wall time, user+system CPU seconds (less
sensitive than wall time to other load on a shared machine), peak RSS, the
bytes the unchanged backup added to the repository (packs + backup record +
index growth) and the bytes it wrote (the process's file system outputs from
getrusage: index pages rewritten included, whether or not the file grew).
The load average before each row is printed under the table, and the first
backup's peak RSS at each N against the smallest N (issue 4's target: RSS at
1M files <= 1.2 x RSS at 10k).

The code measured is the chunkrepo that `python -m chunkrepo` imports: to
compare two checkouts, run it with PYTHONPATH=/absolute/path/of/checkout.
The steps run in / (`python -m` puts the working directory first on
sys.path, ahead of PYTHONPATH).
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile


def make_tree(root: str, n: int) -> None:
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return
    shutil.rmtree(root, ignore_errors=True)
    rnd = random.Random(n)
    for i in range(n):
        d = os.path.join(root, f"d{i // 10000:03d}", f"e{(i // 100) % 100:02d}")
        if i % 100 == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:07d}.txt"), "wb") as f:
            f.write(rnd.randbytes(rnd.randint(20, 1000)).hex().encode())
    # make every file old enough to be trusted by the racy-timestamp rule
    subprocess.run(["find", root, "-exec", "touch", "-h", "-d", "2 days ago", "{}", "+"], check=True)
    open(done, "w").close()


def timed(cmd):
    """(wall s (CPU s), peak RSS MiB, KiB written, stdout) of one process, from GNU time."""
    fd, tf = tempfile.mkstemp()
    os.close(fd)
    p = subprocess.run(["/usr/bin/time", "-o", tf, "-f", "%e %U %S %M %O"] + cmd, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, cwd="/")
    wall, user, system, rss, outputs = open(tf).read().split()[-5:]
    os.unlink(tf)
    if p.returncode not in (0, 3):
        sys.exit(p.stderr.decode())
    return (f"{float(wall):.2f} ({float(user) + float(system):.1f})", f"{int(rss) / 1024:.0f}",
            int(outputs) * 512 / 1024, p.stdout)


def du(path):
    return sum(os.lstat(os.path.join(dp, f)).st_size for dp, _, fs in os.walk(path) for f in fs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--root", default="/tmp/chunkrepo-many")
    ap.add_argument("--exe", default=None)
    ap.add_argument("--repos", default=None, help="where to create the repositories (default: $TMPDIR)")
    args = ap.parse_args()
    exe = [args.exe] if args.exe else [sys.executable, "-m", "chunkrepo"]
    print("| files | first backup s (CPU s) | RSS MiB | unchanged backup s (CPU s) | RSS MiB "
          "| unchanged: added KiB | unchanged: written KiB | ls s (CPU s) | RSS MiB | ls lines |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    loads = []
    first_rss = []
    if args.repos:
        os.makedirs(args.repos, exist_ok=True)
    for n in args.files:
        src = os.path.abspath(os.path.join(args.root, f"tree-{n}"))
        make_tree(src, n)
        repo = os.path.abspath(tempfile.mkdtemp(prefix="chunkrepo-many-repo-", dir=args.repos))
        shutil.rmtree(repo)
        subprocess.run(exe + ["init", "--repo", repo], check=True, capture_output=True, cwd="/")
        loads.append(f"{n}: {os.getloadavg()[0]:.1f}")
        b1, r1, _, _ = timed(exe + ["backup", "--repo", repo, src])
        first_rss.append((n, int(r1)))
        size1 = du(repo)
        b2, r2, written, out = timed(exe + ["backup", "--repo", repo, src])
        added = du(repo) - size1
        ls, r3, _, listing = timed(exe + ["ls", "--repo", repo, out.split()[-1].decode()])
        lines = listing.count(b"\n")
        print(f"| {n} | {b1} | {r1} | {b2} | {r2} | {added / 1024:.1f} | {written:.0f} | {ls} | {r3} | {lines} |",
              flush=True)
        shutil.rmtree(repo)
    print("load average (1 min) before each row:", ", ".join(loads))
    base = first_rss[0][1]
    print("first backup peak RSS:", ", ".join(f"{n}: {r} MiB ({r / base:.2f}x)" for n, r in first_rss))


if __name__ == "__main__":
    main()
