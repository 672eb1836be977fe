"""Read-ahead segments of every open file of a mount, in one LRU, so the
memory read-ahead takes is bounded for the whole mount, however many files
are being read."""

from collections import OrderedDict


class ReadCache:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, int], bytes] = OrderedDict()

    def get(self, ino: int, segment: int) -> bytes | None:
        data = self._entries.get((ino, segment))
        if data is not None:
            self._entries.move_to_end((ino, segment))
        return data

    def has(self, ino: int, segment: int) -> bool:
        return (ino, segment) in self._entries

    def put(self, ino: int, segment: int, data: bytes) -> None:
        self._entries[(ino, segment)] = data
        self._entries.move_to_end((ino, segment))
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def drop(self, ino: int, segment: int) -> None:
        self._entries.pop((ino, segment), None)

    def drop_file(self, ino: int) -> None:
        for key in [key for key in self._entries if key[0] == ino]:
            del self._entries[key]
