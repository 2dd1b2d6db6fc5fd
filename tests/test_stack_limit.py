"""raise_stack_limit: the main thread may then recurse past the 8 MiB default stack, as libtpu's
compiler does on a remat step (it died of SIGSEGV there at 8 MiB). Checked with a real deep native
recursion (repr of a 60000-deep nested list, more than 8 MiB of C stack) in a process started
with a soft 8 MiB limit: it crashes without the call and completes with it."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEEP = """
import sys
sys.path.insert(0, {repo!r})
if {raise_it}:
    from distill_jax.stack_limit import raise_stack_limit
    before, after = raise_stack_limit()
    assert before == 8 * 2**20 and after != before, (before, after)
sys.setrecursionlimit(10**7)
x = []
for _ in range(60_000):
    x = [x]
print(len(repr(x)))
"""


def _deep(raise_it: bool) -> subprocess.CompletedProcess:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    if hard != resource.RLIM_INFINITY and hard < 2**30:
        pytest.skip(f"the hard stack limit here ({hard} bytes) leaves nothing to raise into")
    code = DEEP.format(repo=str(REPO), raise_it=raise_it)
    return subprocess.run(["bash", "-c", f'ulimit -S -s 8192 && exec "{sys.executable}" -c "$0"', code],
                          capture_output=True, text=True, timeout=120)


def test_the_main_thread_recurses_past_8_mib_after_raise_stack_limit():
    crashed = _deep(raise_it=False)
    assert crashed.returncode == -11 or crashed.returncode == 139, crashed  # SIGSEGV: stack overflow
    ok = _deep(raise_it=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.strip() == str(2 * 60_000 + 2)
