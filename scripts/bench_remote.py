#!/usr/bin/env python3
"""A remote repository next to a local one: first backup, unchanged backup, restore.

    AWS_ACCESS_KEY_ID=testkey AWS_SECRET_ACCESS_KEY=testsecret AWS_DEFAULT_REGION=us-east-1 \\
    python3 scripts/bench_remote.py --repo s3://bench/run --storage-option endpoint_url=http://127.0.0.1:7481

Each step is one `chunkrepo` process timed by GNU time (scripts/bench.py).  The
remote repository goes to a fresh prefix below --repo (removed afterwards) with
a fresh index cache; "restore (empty cache)" restores on a second "machine"
(another empty index cache), so it includes rebuilding the index from the store.
"copy" sends the local repository's backups to another fresh remote prefix.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import DEFAULT_SHARED, corpus, timed  # noqa: E402


def run_steps(repo, src, work, env, exe, extra):
    rows = {}

    def step(name, *cmd, stdout=subprocess.DEVNULL):
        rows[name] = timed(exe + list(cmd) + extra, env, stdout)
        return rows[name][4]

    step("init", "init", "--repo", repo)
    step("backup 1 (first)", "backup", "--repo", repo, src, stdout=None)
    out = step("backup 2 (unchanged)", "backup", "--repo", repo, src, stdout=None)
    last = out.strip().splitlines()[-1]
    step("restore", "restore", "--repo", repo, last, "--target", os.path.join(work, "restored"))
    shutil.rmtree(os.path.join(work, "restored"))
    if "://" in repo:
        env2 = dict(env, CHUNKREPO_INDEX_CACHE=os.path.join(work, "cache2"))
        rows["restore (empty cache)"] = timed(exe + ["restore", "--repo", repo, last, "--target",
                                                     os.path.join(work, "restored")] + extra, env2,
                                              subprocess.DEVNULL)
        shutil.rmtree(os.path.join(work, "restored"))
    return rows


def remove_remote(url, options):
    import fsspec
    fs = fsspec.filesystem(url.split("://")[0], **options)
    try:
        fs.rm(url, recursive=True)
    except FileNotFoundError:
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True, help="URL below which a fresh remote repository is made")
    ap.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shared", default=os.environ.get("CHUNKREPO_BENCH_SHARED", DEFAULT_SHARED))
    ap.add_argument("--corpus-root", default="/tmp/bench-corpus")
    ap.add_argument("--workdir", default="/tmp")
    args = ap.parse_args()
    pristine = corpus(args)
    exe = [sys.executable, "-m", "chunkrepo"]
    work = tempfile.mkdtemp(prefix="chunkrepo-bench-remote-", dir=args.workdir)
    src = os.path.join(work, "src")
    subprocess.run(["cp", "-a", pristine, src], check=True)
    env = dict(os.environ, CHUNKREPO_INDEX_CACHE=os.path.join(work, "cache1"))
    url = f"{args.repo.rstrip('/')}/{os.path.basename(work)}"
    extra = [a for o in args.storage_option for a in ("--storage-option", o)]
    options = {}
    for o in args.storage_option:
        k, _, v = o.partition("=")
        try:
            options[k] = json.loads(v)
        except ValueError:
            options[k] = v
    copy_url = url + "-copy"
    copy_env = dict(env, CHUNKREPO_STORAGE_OPTIONS=json.dumps(options))
    try:
        local = run_steps(os.path.join(work, "repo"), src, work, env, exe, [])
        remote = run_steps(url, src, work, env, exe, extra)
        timed(exe + ["init", "--repo", copy_url], copy_env)
        remote["copy local -> remote (2 backups)"] = timed(
            exe + ["copy", "--from", os.path.join(work, "repo"), "--to", copy_url], copy_env)
    finally:
        remove_remote(url, options)
        remove_remote(copy_url, options)
        shutil.rmtree(work)
    print(f"chunkrepo local vs {args.repo}, corpus scale {args.scale:g} seed {args.seed}, one run\n")
    print("| step | local wall s | remote wall s | remote / local | remote user s | remote max RSS MiB |")
    print("|---|---|---|---|---|---|")
    for name, r in remote.items():
        if name.startswith("copy"):
            print(f"| {name} | | {r[0]:.2f} | | {r[1]:.2f} | {r[3]:.0f} |")
            continue
        lw = local[name][0] if name in local else local["restore"][0]
        print(f"| {name} | {lw:.2f} | {r[0]:.2f} | {r[0] / lw:.2f}× | {r[1]:.2f} | {r[3]:.0f} |")


if __name__ == "__main__":
    main()
