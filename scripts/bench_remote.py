#!/usr/bin/env python3
"""A remote repository next to a local one: first backup, unchanged backup, restore.

    AWS_ACCESS_KEY_ID=testkey AWS_SECRET_ACCESS_KEY=testsecret AWS_DEFAULT_REGION=us-east-1 \\
    python3 scripts/bench_remote.py --repo s3://bench/run --storage-option endpoint_url=http://127.0.0.1:7481 \\
        --clients native,s3fs --runs 3

Each step is one `chunkrepo` process timed by GNU time (scripts/bench.py).  The
remote repository goes to a fresh prefix below --repo (removed afterwards) with
a fresh index cache; "restore (empty cache)" restores on a second "machine"
(another empty index cache), so it includes rebuilding the index from the store.
"copy" sends the local repository's backups to another fresh remote prefix.
With --clients, the remote steps run once per S3 client (storage option
client=...), alternately within each run, so both see the same load; the table
gives medians over --runs of wall time and CPU (user + sys, steadier than wall
on a shared machine).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import DEFAULT_SHARED, corpus, timed, work_dir  # noqa: E402


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
    options = {k: v for k, v in options.items() if k != "client"}
    fs = fsspec.filesystem(url.split("://")[0], **options)
    try:
        fs.rm(url, recursive=True)
    except FileNotFoundError:
        pass


def one_run(args, pristine, options):
    """{"local": rows, client: rows, ...} of one run (clients alternating)."""
    exe = [sys.executable, "-m", "chunkrepo"]
    work = work_dir("chunkrepo-bench-remote-", args.workdir)
    src = os.path.join(work, "src")
    subprocess.run(["cp", "-a", pristine, src], check=True)
    env = dict(os.environ, CHUNKREPO_INDEX_CACHE=os.path.join(work, "cache1"))
    out = {}
    urls = []
    try:
        out["local"] = run_steps(os.path.join(work, "repo"), src, work, env, exe, [])
        for client in args.clients:
            opts = dict(options, client=client) if client else options
            url = f"{args.repo.rstrip('/')}/{os.path.basename(work)}-{client or 'default'}"
            urls += [(url, opts), (url + "-copy", opts)]
            extra = [a for k, v in opts.items() for a in ("--storage-option", f"{k}={json.dumps(v)}")]
            env_c = dict(env, CHUNKREPO_INDEX_CACHE=os.path.join(work, f"cache-{client}"))
            rows = run_steps(url, src, work, env_c, exe, extra)
            copy_env = dict(env_c, CHUNKREPO_STORAGE_OPTIONS=json.dumps(opts))
            timed(exe + ["init", "--repo", url + "-copy"], copy_env)
            rows["copy local -> remote (2 backups)"] = timed(
                exe + ["copy", "--from", os.path.join(work, "repo"), "--to", url + "-copy"], copy_env)
            out[client] = rows
    finally:
        for url, opts in urls:
            remove_remote(url, opts)
        shutil.rmtree(work)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True, help="URL below which fresh remote repositories are made")
    ap.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--clients", default="", help="comma-separated S3 clients to compare, e.g. native,s3fs "
                                                  "(default: what chunkrepo chooses)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shared", default=os.environ.get("CHUNKREPO_BENCH_SHARED", DEFAULT_SHARED))
    ap.add_argument("--corpus-root", default="/tmp/bench-corpus")
    ap.add_argument("--workdir", default="/tmp")
    args = ap.parse_args()
    args.clients = args.clients.split(",") if args.clients else [""]
    pristine = corpus(args)
    options = {}
    for o in args.storage_option:
        k, _, v = o.partition("=")
        try:
            options[k] = json.loads(v)
        except ValueError:
            options[k] = v
    runs = [one_run(args, pristine, options) for _ in range(args.runs)]

    def med(side, step, i):
        """median of field i (0 wall, 3 RSS; 1 means user + sys)"""
        if i == 1:
            return statistics.median(r[side][step][1] + r[side][step][2] for r in runs)
        return statistics.median(r[side][step][i] for r in runs)

    print(f"chunkrepo local vs {args.repo}, corpus scale {args.scale:g} seed {args.seed}, "
          f"medians of {args.runs} run(s)\n")
    print("| step | client | local wall s | remote wall s | remote / local | local CPU s | remote CPU s "
          "| remote max RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for step in runs[0][args.clients[0]]:
        for client in args.clients:
            wall, cpu = med(client, step, 0), med(client, step, 1)
            rss = med(client, step, 3)
            lstep = step if step in runs[0]["local"] else "restore"
            if step.startswith("copy"):
                print(f"| {step} | {client} | | {wall:.2f} | | | {cpu:.2f} | {rss:.0f} |")
                continue
            lw, lcpu = med("local", lstep, 0), med("local", lstep, 1)
            print(f"| {step} | {client} | {lw:.2f} | {wall:.2f} | {wall / lw:.2f}× | {lcpu:.2f} | {cpu:.2f} "
                  f"| {rss:.0f} |")


if __name__ == "__main__":
    main()
