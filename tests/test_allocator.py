"""The malloc settings of the data processes: buffers of MiBs, taken and freed
over and over with several alive at a time, stop faulting in fresh pages."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

# Prints the page faults of 200 rounds of 4 MiB buffers (after a warm-up),
# with up to six alive at once so their freeing leaves a large free heap top.
CHURN = """
import os, resource, sys
from dfs.allocator import keep_large_buffers
if sys.argv[1] == "tuned":
    assert keep_large_buffers()
source = os.urandom(4 * 1024 * 1024)
def churn(rounds):
    alive = []
    for i in range(rounds):
        alive.append(bytes(memoryview(source)[i % 7:]))
        if len(alive) > 1 + i % 6:
            alive.clear()
churn(20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn(200)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], check=True, capture_output=True,
                         text=True, timeout=50)
    return int(out.stdout)


def test_large_buffers_are_reused_instead_of_faulted_in():
    pages_per_buffer = 1024
    # Untuned, freeing the heap's top hands the pages back and they fault in again.
    assert _faults("default") > 20 * pages_per_buffer
    assert _faults("tuned") < pages_per_buffer
