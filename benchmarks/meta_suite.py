"""Metadata: create, stat, readdir, rename and unlink of many files in one folder, then
mkdir and rmdir, then small files written whole (create, 4 KiB, close: a new chunk
each on dfs); operations per second for each phase."""

import os
import shutil
import time
from pathlib import Path

from benchmarks.procs import BenchError
from benchmarks.suite import Context, Outcome, Suite
from benchmarks.targets import Target

READDIR_PASSES = 3
SMALL_FILE = 4096


def _timed(count: int, action) -> float:
    start = time.perf_counter()
    action()
    return count / (time.perf_counter() - start)


class MetaSuite(Suite):
    """All phases form one case: each phase works on what the one before it left."""

    name = "meta"

    def cases(self) -> list[str]:
        return ["files"]

    def run(self, case: str, target: Target, root: Path, ctx: Context) -> Outcome:
        folder = root / "meta"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        n, dirs = ctx.scale.meta_files, ctx.scale.meta_dirs
        names = [str(folder / f"f{i}") for i in range(n)]
        moved = [str(folder / f"r{i}") for i in range(n)]
        subdirs = [str(folder / f"d{i}") for i in range(dirs)]
        small = [str(folder / f"s{i}") for i in range(dirs)]
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
        content = os.urandom(SMALL_FILE)

        def create():
            for name in names:
                os.close(os.open(name, flags, 0o644))

        def stat():
            for name in names:
                os.stat(name)

        def readdir():
            for _ in range(READDIR_PASSES):
                if len(os.listdir(folder)) != n:
                    raise BenchError(f"{folder} lists the wrong number of files")

        def rename():
            for old, new in zip(names, moved):
                os.rename(old, new)

        def unlink():
            for name in moved:
                os.unlink(name)

        def write_small():
            for name in small:
                fd = os.open(name, flags, 0o644)
                try:
                    os.write(fd, content)
                finally:
                    os.close(fd)

        phases = [("create", n, create), ("stat", n, stat),
                  ("readdir", n * READDIR_PASSES, readdir), ("rename", n, rename),
                  ("unlink", n, unlink),
                  ("mkdir", dirs, lambda: [os.mkdir(d) for d in subdirs]),
                  ("rmdir", dirs, lambda: [os.rmdir(d) for d in subdirs]),
                  ("small 4 KiB", dirs, write_small)]
        figures = [(phase, "ops/s", _timed(count, action)) for phase, count, action in phases]
        for name in small:
            os.unlink(name)
        folder.rmdir()
        return Outcome(figures)
