"""Records that travel on the wire, as dataclasses with msgpack-friendly forms."""

from dataclasses import dataclass, fields


@dataclass(slots=True)
class Attr:
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

    def to_wire(self) -> dict:
        return {f: getattr(self, f) for f in ATTR_FIELDS}

    @classmethod
    def from_wire(cls, wire: dict) -> "Attr":
        return cls(**{f: wire[f] for f in ATTR_FIELDS if f in wire})


ATTR_FIELDS = tuple(f.name for f in fields(Attr))


@dataclass(slots=True)
class QuotaInfo:
    """A directory's limits (0 = unlimited) and what is used beneath it."""

    ino: int
    bytes_limit: int
    inodes_limit: int
    bytes_used: int
    inodes_used: int
    path: str = ""

    def to_wire(self) -> dict:
        return {f: getattr(self, f) for f in QUOTA_FIELDS}

    @classmethod
    def from_wire(cls, wire: dict) -> "QuotaInfo":
        return cls(**{f: wire[f] for f in QUOTA_FIELDS if f in wire})


QUOTA_FIELDS = tuple(f.name for f in fields(QuotaInfo))
