#!/usr/bin/env python3
"""Restore and tar side by side with restic and borg, alternating, on one corpus.

    python3 scripts/bench_restore.py --corpus /tmp/bench-corpus/s1-seed1 --work /tmp/readpath \\
        --rounds 3 [--ab /work/main] [--steps restore,tar]

The corpus is copied once into WORK/corpus and backed up once by chunkrepo (this
checkout's code), restic and borg (repositories under WORK; reused by later
runs).  Then, per round, the steps run one after the other in the same order:
restic restore, chunkrepo restore (this checkout, then each --ab checkout), borg
export-tar, chunkrepo tar (each checkout), each into a fresh target that is
removed afterwards, with `sync` before every timed command so one step's
writeback does not land on the next.  Alternating, on a shared machine, keeps the
ratios fair where single figures drift.  Each command runs under GNU time (wall,
user, sys, max RSS); the medians and the ratios to restic (restore) and borg
(tar) are printed at the end.  --ab PATH times another checkout (e.g. main) in
the same rounds: A/B at the same moment.

Where the output goes matters as much as the code (docs/design.md, "Restore
against restic, by the state of the filesystem").  --fs work (the default) writes into WORK, where the
previous step's tree was just deleted: on a journal-less ext4 (this VM's /)
every new inode then pays for the recently freed ones of its block group.
--fs fresh / fresh-journal give every timed command a newly made ext4 (a
12 GiB sparse image in WORK on a loop device with direct I/O; journal-less
like the VM's /, or with a journal), unmounted (written back) after it:
root only.  --preread reads every file of the three repositories before each
timed command, so that no tool finds its packs evicted from the page cache
(this VM's DAMON drops pages untouched for ~30 s).
"""

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def timed(cmd, env, cwd=None):
    """Run cmd under GNU time; return (wall, user, sys, maxrss MiB)."""
    fd, tfile = tempfile.mkstemp()
    os.close(fd)
    try:
        p = subprocess.run(["/usr/bin/time", "-o", tfile, "-f", "%e %U %S %M"] + cmd, env=env, cwd=cwd,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if p.returncode != 0:
            sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr.decode(errors='replace')[-2000:]}")
        wall, user, sys_, rss = open(tfile).read().split()[-4:]
    finally:
        os.unlink(tfile)
    return float(wall), float(user), float(sys_), int(rss) / 1024


class FreshFs:
    """A newly made ext4 mounted at WORK/mnt for one timed command (see the module doc)."""

    def __init__(self, work: str, journal: bool):
        self.image = os.path.join(work, "fs.img")
        self.mnt = os.path.join(work, "mnt")
        self.journal = journal
        self.dev = None

    def __enter__(self):
        if os.path.exists(self.image):
            os.unlink(self.image)
        with open(self.image, "wb") as f:
            f.truncate(12 << 30)
        subprocess.run(["mkfs.ext4", "-q", "-F"] + ([] if self.journal else ["-O", "^has_journal"]) + [self.image],
                       check=True)
        self.dev = subprocess.run(["losetup", "--direct-io=on", "-f", "--show", self.image], check=True,
                                  capture_output=True, text=True).stdout.strip()
        os.makedirs(self.mnt, exist_ok=True)
        subprocess.run(["mount", self.dev, self.mnt], check=True)
        return self.mnt

    def __exit__(self, *exc):
        subprocess.run(["umount", self.mnt], check=True)     # writes the tree back
        subprocess.run(["losetup", "-d", self.dev], check=True)
        os.unlink(self.image)


def preread(paths):
    """Read every file below paths (into the page cache)."""
    buf = bytearray(1 << 20)
    for top in paths:
        for dirpath, _, names in os.walk(top):
            for name in names:
                with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                    while f.readinto(buf):
                        pass


def chunkrepo_env(checkout):
    return dict(os.environ, PYTHONPATH=checkout)


def setup(args, env):
    corpus = os.path.join(args.work, "corpus")
    if not os.path.isdir(corpus):
        subprocess.run(["cp", "-a", args.corpus, corpus], check=True)
    cr = os.path.join(args.work, "cr")
    if not os.path.isdir(cr):
        cenv = chunkrepo_env(ROOT)
        subprocess.run([sys.executable, "-P", "-m", "chunkrepo", "init", "--repo", cr], env=cenv, check=True)
        subprocess.run([sys.executable, "-P", "-m", "chunkrepo", "backup", "--repo", cr, corpus], env=cenv, check=True)
    restic = os.path.join(args.work, "restic")
    if not os.path.isdir(restic):
        subprocess.run(["restic", "init", "-q", "-r", restic], env=env, check=True)
        subprocess.run(["restic", "backup", "-q", "-r", restic, corpus], env=env, check=True)
    borg = os.path.join(args.work, "borg")
    if not os.path.isdir(borg) and "tar" in args.steps.split(",") and not args.no_peers:
        subprocess.run(["borg", "init", "-e", "none", borg], env=env, check=True)
        subprocess.run(["borg", "create", borg + "::b1", corpus], env=env, check=True)
    return cr, restic, borg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/tmp/bench-corpus/s1-seed1")
    ap.add_argument("--work", default="/tmp/bench-restore")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ab", action="append", default=[], metavar="CHECKOUT",
                    help="another chunkrepo checkout to time in the same rounds (repeatable)")
    ap.add_argument("--steps", default="restore,tar")
    ap.add_argument("--no-peers", action="store_true", help="time chunkrepo checkouts only")
    ap.add_argument("--fs", choices=("work", "fresh", "fresh-journal"), default="work",
                    help="where restores and tars write (see above)")
    ap.add_argument("--preread", action="store_true", help="read the repositories before every timed command")
    args = ap.parse_args()
    if args.fs != "work" and os.geteuid() != 0:
        sys.exit("--fs fresh/fresh-journal makes and mounts filesystems: run as root")
    os.makedirs(args.work, exist_ok=True)
    env = dict(os.environ, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes", BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
    env.setdefault("RESTIC_PASSWORD", "bench")
    cr, restic, borg = setup(args, env)
    steps = args.steps.split(",")
    checkouts = [("chunkrepo", ROOT)] + [(f"chunkrepo@{os.path.basename(c.rstrip('/'))}", c) for c in args.ab]
    where = args.work if args.fs == "work" else os.path.join(args.work, "mnt")
    target = os.path.join(where, "target")
    out = os.path.join(where, "out.tar")
    runs = []     # (step, tool, (wall, user, sys, rss))

    def run(step, tool, cmd, cenv, cwd=None):
        for p in (target, out):
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.unlink(p)
        fs = FreshFs(args.work, args.fs == "fresh-journal") if args.fs != "work" else contextlib.nullcontext()
        with fs:
            if args.preread:
                preread((cr, restic, borg))
            subprocess.run(["sync"], check=True)
            if cwd:
                os.makedirs(cwd)
            # not this checkout: `python -m` puts the working directory first on sys.path
            r = timed(cmd, cenv, cwd or args.work)
        runs.append((step, tool, r))
        print(f"{step:8} {tool:22} {r[0]:7.2f} s wall {r[1]:6.2f} user {r[2]:6.2f} sys {r[3]:6.0f} MiB",
              flush=True)

    for _ in range(args.rounds):
        if "restore" in steps:
            if not args.no_peers:
                run("restore", "restic", ["restic", "-q", "-r", restic, "restore", "latest", "--target", target],
                    env)
            for tool, c in checkouts:
                run("restore", tool, [sys.executable, "-P", "-m", "chunkrepo", "restore", "--repo", cr, "latest",
                                      "--target", target], chunkrepo_env(c))
        if "tar" in steps:
            if not args.no_peers:
                run("tar", "borg", ["borg", "export-tar", borg + "::b1", out], env)
            for tool, c in checkouts:
                run("tar", tool, [sys.executable, "-P", "-m", "chunkrepo", "tar", "--repo", cr, "latest", "-o", out],
                    chunkrepo_env(c))
    for p in (target, out):
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.unlink(p)

    print("\nmedians (wall / user / sys s, max RSS MiB)")
    peer = {"restore": "restic", "tar": "borg"}
    for step in steps:
        med = {}
        for tool in [peer[step]] + [t for t, _ in checkouts]:
            rs = [r for s, t, r in runs if s == step and t == tool]
            if rs:
                med[tool] = [statistics.median(x) for x in zip(*rs)]
        base = med.get(peer[step])
        for tool, m in med.items():
            ratio = f"  {m[0] / base[0]:.2f}x {peer[step]}" if base and tool != peer[step] else ""
            print(f"{step:8} {tool:22} {m[0]:7.2f} / {m[1]:6.2f} / {m[2]:6.2f}  {m[3]:5.0f} MiB{ratio}")


if __name__ == "__main__":
    main()
