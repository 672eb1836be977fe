"""Recently read data of every open file of a mount, in one LRU bounded in bytes, so
the memory that read-ahead and block caching take is bounded for the whole mount,
however many files are being read.

A piece is named (inode, unit, index) and holds the file's bytes from index * unit
for up to `unit` bytes: read-ahead stores 1 MiB segments, random reads 64 KiB blocks.
Read-ahead pieces also have a bound of their own: a sequential reader rarely reads
them again, and a large cache given for random reads would otherwise fill with a
long sequential read's segments (memory the process must first fault in).
"""

from collections import OrderedDict


class ReadCache:
    def __init__(self, capacity: int, ahead_capacity: int):
        self.capacity = capacity
        self.ahead_capacity = min(ahead_capacity, capacity)
        self.size = 0
        self.ahead_size = 0
        self._entries: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        # The read-ahead pieces among them, in the same order.
        self._ahead: OrderedDict[tuple[int, int, int], None] = OrderedDict()

    def get(self, ino: int, unit: int, index: int) -> bytes | None:
        key = (ino, unit, index)
        data = self._entries.get(key)
        if data is not None:
            self._entries.move_to_end(key)
            if key in self._ahead:
                self._ahead.move_to_end(key)
        return data

    def has(self, ino: int, unit: int, index: int) -> bool:
        return (ino, unit, index) in self._entries

    def put(self, ino: int, unit: int, index: int, data: bytes, ahead: bool = False) -> None:
        key = (ino, unit, index)
        self._remove(key)
        self._entries[key] = data
        self.size += len(data)
        if ahead:
            self._ahead[key] = None
            self.ahead_size += len(data)
            while self.ahead_size > self.ahead_capacity:
                self._remove(next(iter(self._ahead)))
        while self.size > self.capacity:
            self._remove(next(iter(self._entries)))

    def drop(self, ino: int, unit: int, start: int, end: int) -> None:
        """Forget the pieces of one unit that overlap bytes [start, end)."""
        for index in range(start // unit, (end - 1) // unit + 1):
            self._remove((ino, unit, index))

    def drop_file(self, ino: int) -> None:
        for key in [key for key in self._entries if key[0] == ino]:
            self._remove(key)

    def _remove(self, key: tuple[int, int, int]) -> None:
        data = self._entries.pop(key, None)
        if data is None:
            return
        self.size -= len(data)
        if key in self._ahead:
            del self._ahead[key]
            self.ahead_size -= len(data)
