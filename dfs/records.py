"""Records that travel on the wire, as dataclasses with msgpack-friendly forms."""

from dataclasses import dataclass, fields
from functools import cache


@cache
def _field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


class WireRecord:
    """A record whose wire form is a map of its fields."""

    __slots__ = ()

    def to_wire(self) -> dict:
        return {f: getattr(self, f) for f in _field_names(type(self))}

    @classmethod
    def from_wire(cls, wire: dict):
        try:
            # The common case, and four times faster than picking the fields:
            # a readdir page holds hundreds of these.
            return cls(**wire)
        except TypeError:
            # A map with fields this side does not know (a newer peer's).
            return cls(**{f: wire[f] for f in _field_names(cls) if f in wire})


@dataclass(slots=True)
class Attr(WireRecord):
    """What stat(2) tells about an inode. Times are nanoseconds since the epoch;
    `blocks` counts 512-byte units actually allocated (holes excluded)."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int
    atime: int
    mtime: int
    ctime: int
    gen: int = 0


@dataclass(slots=True)
class QuotaInfo(WireRecord):
    """A directory's limits (0 = unlimited) and what is used beneath it."""

    ino: int
    bytes_limit: int
    inodes_limit: int
    bytes_used: int
    inodes_used: int
    path: str = ""


@dataclass(slots=True)
class BackupInfo(WireRecord):
    """A backup of the metadata, as the metaserver keeps it: `at` is when it
    was made (unix seconds), `txn` the last LMDB transaction it holds."""

    name: str
    size: int
    at: float
    txn: int
    sha256: str


@dataclass(slots=True)
class LogCopy(WireRecord):
    """A copy of the metadata made for metaloggers: `history` and `seq` are the
    position of the last commit it holds, `restores` how many restores the
    database has been through."""

    name: str
    size: int
    history: int
    seq: int
    restores: int
