#!/usr/bin/env python3
"""Where chunkrepo's threads wait for the GIL: contended re-acquisitions by the C call that released it.

    sudo python3 scripts/profile_gil.py [--min-us 8] -- backup --repo R SRC

Runs `python -m chunkrepo ARGS...` under bpftrace (Debian package `bpftrace`;
needs root) with a probe on CPython's PyEval_RestoreThread, the function every
C call that released the GIL (a read, a zstd compression, an LMDB put) calls to
take it back. A call that waited at least --min-us microseconds was contended:
another thread held the GIL, so this one slept and was woken again (two
context switches, ~30 us of CPU each in this VM, and the wait itself).

Prints, per kind of thread (main, chunkrepo-read, ...), the time spent waiting and
the number of waits, by the C function that had released the GIL (its return
address, symbolised with addr2line from the process's own /proc/self/maps,
saved as it exits), and how many times each thread took the GIL in all.

The probes cost ~1-3 us per GIL hand-over (~1M in a scale-1.0 first backup),
so the run is slower than without: compare shares, not seconds. A benchmark
tool, not a test: nothing here runs in CI.
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

RUNNER = """\
import json, os, shutil, sys, threading
maps = sys.argv.pop(1)
sys.argv[0] = "chunkrepo"
names = {threading.get_native_id(): "main"}
_boot = threading.Thread._bootstrap_inner
def _named(self):
    names[threading.get_native_id()] = self.name
    _boot(self)
threading.Thread._bootstrap_inner = _named
from chunkrepo.cli.main import main
try:
    main()
finally:
    shutil.copy(f"/proc/{os.getpid()}/maps", maps)
    with open(maps + ".threads", "w") as f:
        json.dump(names, f)
"""


def libpython(python: str) -> str:
    """The file holding PyEval_RestoreThread: libpython if shared, else the executable."""
    out = subprocess.run([python, "-c", "import sysconfig, os; d = sysconfig.get_config_var; "
                          "print(os.path.join(d('LIBDIR'), d('LDLIBRARY')) if d('Py_ENABLE_SHARED') else '')"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return out or os.path.realpath(shutil.which(python) or python)


def program(lib: str, min_us: int) -> str:
    probe = f"uprobe:{lib}:PyEval_RestoreThread"
    ret = f"uretprobe:{lib}:PyEval_RestoreThread"
    return (
        f"{probe} /pid == cpid/ {{ @s[tid] = nsecs; @ra[tid] = *(uint64 *)reg(\"sp\"); @calls[tid] = count(); }}\n"
        f"{ret} /pid == cpid && @s[tid]/ {{ $d = (nsecs - @s[tid]) / 1000;"
        f" if ($d >= {min_us}) {{ @n[tid, @ra[tid]] = count(); @us[tid, @ra[tid]] = sum($d); }}"
        f" delete(@s[tid]); delete(@ra[tid]); }}\n"
        "END { clear(@s); clear(@ra); }\n")


class Symbols:
    def __init__(self, maps_path: str):
        self.maps = []
        with open(maps_path) as f:
            for line in f:
                p = line.split()
                if len(p) >= 6:
                    lo, hi = (int(x, 16) for x in p[0].split("-"))
                    self.maps.append((lo, hi, int(p[2], 16), p[5]))
        self.cache: dict = {}

    def __call__(self, addr: int) -> str:
        for lo, hi, off, path in self.maps:
            if lo <= addr < hi:
                key = (path, addr - lo + off)
                if key not in self.cache:
                    out = subprocess.run(["addr2line", "-f", "-e", path, hex(key[1])],
                                         capture_output=True, text=True).stdout.split("\n")[0]
                    self.cache[key] = f"{os.path.basename(path).split('.')[0]}:{out or '?'}"
                return self.cache[key]
        return hex(addr)


def thread_kind(name: str) -> str:
    """A thread's name without its number: chunkrepo-read_0 -> chunkrepo-read."""
    return re.sub(r"[-_]\d+$", "", name) or "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--min-us", type=int, default=8, help="a wait this long or longer counts as contended")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then chunkrepo's arguments")
    a = ap.parse_args()
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    if not args:
        ap.error("give chunkrepo's arguments after --")
    for tool in ("bpftrace", "addr2line"):
        if shutil.which(tool) is None:
            print(f"profile_gil: {tool} not found (apt-get install bpftrace binutils)", file=sys.stderr)
            return 2
    lib = libpython(a.python)
    with tempfile.TemporaryDirectory(prefix="profile-gil-") as tmp:
        runner, maps, prog = (os.path.join(tmp, n) for n in ("runner.py", "maps", "gil.bt"))
        with open(runner, "w") as f:
            f.write(RUNNER)
        with open(prog, "w") as f:
            f.write(program(lib, a.min_us))
        cmd = " ".join([a.python, "-P", runner, maps] + [_quote(x) for x in args])
        env = dict(os.environ, BPFTRACE_MAP_KEYS_MAX="65536")
        out = subprocess.run(["bpftrace", prog, "-c", cmd], capture_output=True, text=True, env=env,
                             preexec_fn=_memlock)
        sys.stderr.write("".join(s + "\n" for s in out.stdout.splitlines() if s and not s.startswith("@")
                                 and not s.startswith("Attaching")))
        if not os.path.exists(maps):
            print(f"profile_gil: the command did not finish normally\n{out.stderr}", file=sys.stderr)
            return 1
        sym = Symbols(maps)
        with open(maps + ".threads") as f:
            names = {int(k): v for k, v in json.load(f).items()}
    waits = collections.defaultdict(lambda: [0, 0])
    calls: dict = {}
    for line in out.stdout.splitlines():
        m = re.match(r"@(n|us)\[(\d+), (\d+)\]: (\d+)", line)
        if m:
            waits[(int(m[2]), int(m[3]))][0 if m[1] == "n" else 1] += int(m[4])
            continue
        m = re.match(r"@calls\[(\d+)\]: (\d+)", line)
        if m:
            calls[int(m[1])] = int(m[2])
    if not calls:
        print(f"profile_gil: no samples\n{out.stderr}", file=sys.stderr)
        return 1
    kinds = {t: thread_kind(names.get(t, "")) for t in calls}
    by = collections.defaultdict(lambda: [0, 0])
    for (tid, ra), (n, us) in waits.items():
        row = by[(kinds.get(tid, "other"), sym(ra))]
        row[0] += n
        row[1] += us
    for kind in sorted(set(kinds.values())):
        tids = [t for t, k in kinds.items() if k == kind]
        total = sum(us for (k, _), (n, us) in by.items() if k == kind)
        print(f"{kind}: {len(tids)} thread(s), {sum(calls[t] for t in tids):,} GIL acquisitions after a C call, "
              f"contended waits {total / 1e6:.2f} s")
    print(f"\n{'wait s':>8} {'waits':>8}  thread           released by")
    for (kind, where), (n, us) in sorted(by.items(), key=lambda kv: -kv[1][1])[:a.top]:
        print(f"{us / 1e6:8.2f} {n:8,}  {kind:16s} {where}")
    return 0


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'" if re.search(r"[^\w@%+=:,./-]", s) else s


def _memlock() -> None:
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass


if __name__ == "__main__":
    sys.exit(main())
