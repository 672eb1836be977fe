"""One lock per volume or snapshot: the CO may send concurrent calls for one."""

import threading
from contextlib import ExitStack, contextmanager

# Snapshot ids share the volumes' key space behind this prefix, which no
# volume id can contain, so one call can hold a volume and a snapshot at once.
SNAPSHOT_KEY = "snapshot:"


class Locks:
    def __init__(self):
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def __call__(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextmanager
    def holding(self, *keys: str):
        """Hold the locks of all `keys`, taken in sorted order so that two calls
        that each need two of them never wait for each other."""
        with ExitStack() as stack:
            for key in sorted(set(keys)):
                stack.enter_context(self(key))
            yield
