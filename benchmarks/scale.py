"""How big and how long each suite runs: the full sizes of the issue, and a smoke scale
of seconds and tiny sizes that the test suite runs so the runner never rots."""

from dataclasses import dataclass, fields, replace

from benchmarks.procs import BenchError


@dataclass(frozen=True)
class Scale:
    seq_size: str = "1g"
    par_size: str = "256m"
    rand_size: str = "256m"
    fio_runtime: int = 20
    meta_files: int = 5000
    meta_dirs: int = 1000
    fileio_size: str = "256M"
    fileio_seconds: int = 15
    mysql_seconds: int = 180
    mysql_tables: int = 4
    mysql_table_rows: int = 20000
    mysql_threads: int = 8
    bulk_rows_per_second: int = 2000
    # Below what the bulk load writes in a full run: the demo needs its expansions.
    volume_mib: int = 512
    # File sizes the memory suite writes and reads, smallest first.
    mem_sizes: str = "64m,1g,4g"

    def with_overrides(self, pairs: list[str]) -> "Scale":
        """Apply `name=value` overrides from the command line (e.g. seq_size=256m)."""
        known = {f.name: f.type for f in fields(self)}
        changes = {}
        for pair in pairs:
            name, _, value = pair.partition("=")
            if name not in known or not value:
                raise BenchError(f"--set {pair!r}: expected NAME=VALUE with NAME one of "
                                 f"{', '.join(known)}")
            changes[name] = int(value) if known[name] in (int, "int") else value
        return replace(self, **changes)


FULL = Scale()
SMOKE = Scale(seq_size="8m", par_size="2m", rand_size="4m", fio_runtime=1, meta_files=100,
              meta_dirs=20, fileio_size="8M", fileio_seconds=1, mysql_seconds=7,
              mysql_tables=1, mysql_table_rows=200, mysql_threads=8, bulk_rows_per_second=200,
              volume_mib=256, mem_sizes="1m,4m")
