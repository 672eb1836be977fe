"""The metaserver killed (SIGKILL) and restarted under a busy mount: every
acknowledged change is there, the mount reconnects by itself, open files stay
usable and nothing is applied twice."""

import os
import random
import subprocess
import sys
import time

import pytest

from conftest import start_cluster
from faults import kill_server, restart_server, status, wait_for


@pytest.fixture
def fault_cluster(tmp_path):
    cluster = start_cluster(tmp_path, heartbeat_timeout=2)
    yield cluster
    cluster.teardown()


# The workload runs in a process of its own: forking the restarted metaserver
# from a process with a thread blocked on the mount can deadlock in the kernel
# (fork waits for the memory map the blocked FUSE request holds).
WRITER = """
import os, random, sys
root, log = sys.argv[1], open(sys.argv[2], "a")
i = 0
while True:
    payload = random.Random(i).randbytes(1000 + (i * 37_001) % (1 << 20))
    try:
        with open(f"{root}/file{i}", "wb") as f:
            f.write(payload)
        os.rename(f"{root}/file{i}", f"{root}/done{i}")
        os.mkdir(f"{root}/dir{i}")
        print("ok", i, file=log, flush=True)
    except OSError as exc:
        print("error", i, repr(exc).replace(" ", "_"), file=log, flush=True)
    i += 1
"""


def payload(i: int) -> bytes:
    return random.Random(i).randbytes(1000 + (i * 37_001) % (1 << 20))


def results(log) -> tuple[list[int], list[str]]:
    done, errors = [], []
    for line in log.read_text().splitlines():
        kind, i, *rest = line.split()
        if kind == "ok":
            done.append(int(i))
        else:
            errors.append(line)
    return done, errors


@pytest.mark.timeout(120)
def test_metaserver_sigkill_keeps_every_acknowledged_change(fault_cluster):
    c = fault_cluster
    root = c.mnt / "work"
    root.mkdir()
    held = open(c.mnt / "held", "wb")
    held.write(b"a" * 5000)
    held.flush()
    log = c.base / "writer.log"
    log.touch()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(log)])
    try:
        wait_for(lambda: len(results(log)[0]) >= 3, 30, "files before the crash")
        for _ in range(2):
            kill_server(c.local, "meta")
            time.sleep(1.0)
            restart_server(c.local, "meta")
            before = len(results(log)[0])
            wait_for(lambda b=before: len(results(log)[0]) >= b + 3, 60,
                     "the mount to carry on after the restart")
    finally:
        writer.kill()
        writer.wait()
    held.write(b"b" * 5000)
    held.close()

    done, errors = results(log)
    assert not errors, f"operations failed: {errors[:3]}"
    fresh = c.mount()
    assert (fresh / "held").read_bytes() == b"a" * 5000 + b"b" * 5000
    names = set(os.listdir(fresh / "work"))
    for i in done:
        assert (fresh / "work" / f"done{i}").read_bytes() == payload(i), i
        assert f"dir{i}" in names
    # A rename retried across a crash was applied once: no file is both
    # under its old and its new name.
    assert not [n for n in names if n.startswith("file") and f"done{n[4:]}" in names]
    wait_for(lambda: sum(cs["alive"] for cs in status(c.ref)["chunkservers"]) == 3, 20,
             "the chunk servers to re-register")
