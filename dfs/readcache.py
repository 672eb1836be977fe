"""Recently read data of every open file of a mount, in one LRU bounded in bytes, so
the memory that read-ahead and block caching take is bounded for the whole mount,
however many files are being read.

A piece is named (inode, unit, index) and holds the file's bytes from index * unit
for up to `unit` bytes: read-ahead stores 1 MiB segments, random reads 64 KiB blocks.
"""

from collections import OrderedDict


class ReadCache:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 0
        self._entries: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()

    def get(self, ino: int, unit: int, index: int) -> bytes | None:
        key = (ino, unit, index)
        data = self._entries.get(key)
        if data is not None:
            self._entries.move_to_end(key)
        return data

    def has(self, ino: int, unit: int, index: int) -> bool:
        return (ino, unit, index) in self._entries

    def put(self, ino: int, unit: int, index: int, data: bytes) -> None:
        key = (ino, unit, index)
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= len(old)
        self._entries[key] = data
        self.size += len(data)
        while self.size > self.capacity:
            self.size -= len(self._entries.popitem(last=False)[1])

    def drop(self, ino: int, unit: int, start: int, end: int) -> None:
        """Forget the pieces of one unit that overlap bytes [start, end)."""
        for index in range(start // unit, (end - 1) // unit + 1):
            data = self._entries.pop((ino, unit, index), None)
            if data is not None:
                self.size -= len(data)

    def drop_file(self, ino: int) -> None:
        for key in [key for key in self._entries if key[0] == ino]:
            self.size -= len(self._entries.pop(key))
