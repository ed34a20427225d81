"""cli.main limits glibc's malloc to one arena: threads share the main one."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux only")

# two threads that allocate, then the count of glibc thread-arena heaps (64 MiB
# reservations, mostly PROT_NONE) in this process's maps
_PROBE = """
import sys, threading
if sys.argv[1] == "limited":
    from chunkrepo.cli.main import _one_malloc_arena
    _one_malloc_arena()
def work():
    bufs = [bytearray(1 << 16) for _ in range(8)]
started = [threading.Thread(target=work) for _ in range(2)]
for t in started: t.start()
for t in started: t.join()
n = 0
for line in open("/proc/self/maps"):
    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
    n += line.split()[1] == "---p" and hi - lo > 32 << 20
print(n)
"""


def _arena_heaps(mode: str) -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("MALLOC_ARENA_MAX", None)
    env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, check=True,
                         capture_output=True, text=True).stdout
    return int(out)


def test_threads_allocate_from_the_main_arena():
    if _arena_heaps("default") == 0:
        pytest.skip("this C library gives threads no arenas of their own")
    assert _arena_heaps("limited") == 0
