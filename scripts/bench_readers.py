#!/usr/bin/env python3
"""Reader threads or reader processes: the read path of a first backup, alone.

    python3 scripts/bench_readers.py SRC [--mode threads processes] [--workers 2] [--rounds 2]

What a first backup's readers do, without the rest of chunkrepo (no index, no
directory records, no registration): a walk in the main thread hands out
batches of up to 64 files or 8 MiB; each worker opens, reads, fstats, lists
the xattrs of and closes each file, cuts files over the chunker's minimum
size with pyfastcdc (chunkrepo's parameters), hashes every chunk with blake3,
compresses it (zstd level 1 up to the minimum size, 3 above, as chunkrepo
does) and appends it to a pack file of its own (16 MiB, fsynced when full).
Threads share one set of stored ids under a lock; processes keep one set each
and report their ids, so a chunk met by both processes is stored twice (the
count is printed: a real design would claim ids in the main process).

It measures how much of the first backup's wall time the GIL costs: both
modes do the same work, threads hand the GIL over several times per small
file, processes do not.  Each round copies SRC afresh (cp -a) first: this
VM's DAMON reclaim pages out page-cache pages untouched for ~30 s.  Prints
wall time, CPU seconds (the process and its children) and the chunks stored.
"""

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import blake3
import zstandard
from pyfastcdc import FastCDC

MIN, AVG, MAX = 256 << 10, 1 << 20, 4 << 20
PACK = 16 << 20
BATCH_FILES, BATCH_BYTES = 64, 8 << 20


def walk(root: str):
    """Batches of (path, size) of the regular files under root, in walk order."""
    batch, nbytes = [], 0
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in reversed(entries):
            st = e.stat(follow_symlinks=False)
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            elif e.is_file(follow_symlinks=False):
                batch.append((e.path, st.st_size))
                nbytes += st.st_size
                if len(batch) >= BATCH_FILES or nbytes >= BATCH_BYTES:
                    yield batch
                    batch, nbytes = [], 0
    if batch:
        yield batch


class Reader:
    """One worker's state: chunker, compressors, read buffer, pack file."""

    def __init__(self, packdir: str, claim):
        self.cdc = FastCDC(AVG, min_size=MIN, max_size=MAX)
        self.small = zstandard.ZstdCompressor(level=1)
        self.large = zstandard.ZstdCompressor(level=3)
        self.buf = bytearray(2 * MAX)
        self.packdir = packdir
        self.claim = claim
        self.pack = None
        self.packed = 0
        self.stored = 0

    def append(self, data) -> None:
        z = (self.small if len(data) <= MIN else self.large).compress(data)
        if len(z) >= len(data):
            z = bytes(data)
        if self.pack is None:
            fd, _ = tempfile.mkstemp(dir=self.packdir)
            self.pack, self.packed = fd, 0
        os.write(self.pack, z)
        self.packed += len(z)
        self.stored += len(z)
        if self.packed >= PACK:
            self.seal()

    def seal(self) -> None:
        if self.pack is not None:
            os.fsync(self.pack)
            os.close(self.pack)
            self.pack = None

    def chunk(self, data) -> None:
        cid = blake3.blake3(data).digest()
        if self.claim(cid):
            self.append(data)

    def file(self, path: str, size: int) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOATIME)
        try:
            if size <= MIN:
                data = os.read(fd, size + 1)
                os.fstat(fd)
                os.listxattr(fd)
                if data:
                    self.chunk(data)
                return
            mv = memoryview(self.buf)
            end, eof = 0, False
            while True:
                while not eof and end < len(mv):
                    n = os.readv(fd, [mv[end:]])
                    eof = n == 0
                    end += n
                pos = 0
                for c in self.cdc.cut_buf(mv[:end]):
                    if not eof and end - pos < MAX:
                        break
                    self.chunk(c.data)
                    pos += len(c.data)
                if eof and pos >= end:
                    break
                rest = end - pos
                mv[:rest] = mv[pos:end]
                end = rest
            os.fstat(fd)
            os.listxattr(fd)
        finally:
            os.close(fd)


_proc = None


def _proc_init(packdir: str) -> None:
    global _proc
    from multiprocessing.util import Finalize
    seen, new = set(), []

    def claim(cid):
        if cid in seen:
            return False
        seen.add(cid)
        new.append(cid)
        return True
    _proc = (Reader(packdir, claim), new)
    Finalize(_proc[0], _proc[0].seal, exitpriority=10)    # the last pack, when the worker exits


def _proc_batch(batch):
    reader, new = _proc
    for path, size in batch:
        reader.file(path, size)
    ids = list(new)
    new.clear()
    return (os.getpid(), reader.stored), ids


def run(src: str, mode: str, workers: int, packdir: str) -> dict:
    t0 = time.monotonic()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    chunks = dup = 0
    if mode == "threads":
        from concurrent.futures import ThreadPoolExecutor
        seen, lock, local = set(), threading.Lock(), threading.local()
        readers = []

        def claim(cid):
            with lock:
                if cid in seen:
                    return False
                seen.add(cid)
                return True

        def work(batch):
            reader = getattr(local, "reader", None)
            if reader is None:
                reader = local.reader = Reader(packdir, claim)
                with lock:
                    readers.append(reader)
            for path, size in batch:
                reader.file(path, size)
        sem = threading.BoundedSemaphore(2 * workers + 2)
        with ThreadPoolExecutor(workers) as ex:
            futs = []
            for batch in walk(src):
                sem.acquire()
                f = ex.submit(work, batch)
                f.add_done_callback(lambda _f: sem.release())
                futs.append(f)
            for f in futs:
                f.result()
        for reader in readers:
            reader.seal()
        chunks, stored = len(seen), sum(r.stored for r in readers)
    else:
        # fork: the workers are this process's children, so their CPU is counted once reaped
        pool = mp.get_context("fork").Pool(workers, initializer=_proc_init, initargs=(packdir,))
        seen, stored = set(), {}
        try:
            for (pid, n), ids in pool.imap_unordered(_proc_batch, walk(src), chunksize=1):
                stored[pid] = n
                for cid in ids:
                    if cid in seen:
                        dup += 1
                    seen.add(cid)
        finally:
            pool.close()      # each worker seals its pack as it exits (atexit)
            pool.join()
        stored = sum(stored.values())
        chunks = len(seen)
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(r1, k) - getattr(r0, k) + getattr(c1, k) - getattr(c0, k)
              for k in ("ru_utime", "ru_stime"))
    return {"wall": wall, "cpu": cpu, "chunks": chunks, "stored": stored, "dup": dup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("--mode", nargs="+", default=["threads", "processes"], choices=["threads", "processes"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default="/tmp/bench-readers", help="scratch directory (copy of SRC, packs)")
    a = ap.parse_args()
    sys.setswitchinterval(0.0002)     # as the chunkrepo CLI sets it
    rows = {m: [] for m in a.mode}
    for rnd in range(a.rounds):
        for mode in a.mode:
            shutil.rmtree(a.work, ignore_errors=True)
            os.makedirs(os.path.join(a.work, "packs"))
            copy = os.path.join(a.work, "src")
            subprocess.run(["cp", "-a", a.src, copy], check=True)
            os.sync()
            r = run(copy, mode, a.workers, os.path.join(a.work, "packs"))
            rows[mode].append(r)
            print(f"round {rnd + 1} {mode:9s} wall {r['wall']:.2f} s  cpu {r['cpu']:.2f} s  "
                  f"chunks {r['chunks']}  stored {r['stored'] / 2**20:.0f} MiB  stored twice {r['dup']}  "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    shutil.rmtree(a.work, ignore_errors=True)
    for mode, rs in rows.items():
        walls = sorted(r["wall"] for r in rs)
        cpus = sorted(r["cpu"] for r in rs)
        print(f"{mode:9s} median wall {walls[len(walls) // 2]:.2f} s, cpu {cpus[len(cpus) // 2]:.2f} s")


if __name__ == "__main__":
    main()
