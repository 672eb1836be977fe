"""The records kept in LMDB, as dataclasses stored as msgpack lists.

A record is packed as the list of its field values in declaration order, so
adding a field at the end with a default keeps old records readable, and a
record with fields beyond this version's (written by a newer one, before a
downgrade) is read without them.
"""

import stat
from dataclasses import dataclass, field, fields

import msgpack

# Field names per record class. Not dataclasses.astuple: it deep-copies every
# value, which was a visible share of each commit's time.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def pack(record) -> bytes:
    return msgpack.packb([getattr(record, name) for name in _names(type(record))],
                         use_bin_type=True)


def unpack(cls, data: bytes):
    values = msgpack.unpackb(data, raw=False)
    try:
        return cls(*values)
    except TypeError:
        known = len(_names(cls))
        if len(values) <= known:
            raise
        return cls(*values[:known])


@dataclass(slots=True)
class Inode:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    atime: int
    mtime: int
    ctime: int
    # The directory this inode hangs under (for files: where its quota is
    # charged); walking parents to the root finds the quotas that apply.
    parent: int
    target: bytes = b""
    # The name under `parent` (for directories, the one name they have), so a
    # quota directory's path can be shown without searching.
    name: bytes = b""
    # Directories: the cookie the next entry gets, so readdir offsets are stable.
    next_cookie: int = 1
    # Copies of each chunk (0 = the cluster default). Files: their own chunks;
    # directories: what files and directories created inside them inherit.
    replicas: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)


@dataclass(slots=True)
class Dentry:
    ino: int
    cookie: int


@dataclass(slots=True)
class Chunk:
    version: int
    # csids holding the replica at `version`.
    locations: list = field(default_factory=list)
    refs: int = 1
    # Copies wanted (0 = the cluster default): the owning file's factor, kept
    # here so re-replication need not look the file up for every chunk.
    replicas: int = 0


@dataclass(slots=True)
class Quota:
    bytes_limit: int
    inodes_limit: int
    bytes_used: int = 0
    inodes_used: int = 0


@dataclass(slots=True)
class SessionRecord:
    host: str
    mountpoint: str
    pid: int
    # The directory whose attachment epoch the session was opened under
    # (0: none) and that epoch (see fences.py).
    fence_ino: int = 0
    fence_epoch: int = 0
    # When it was opened (unix seconds; 0 for sessions recorded before this was).
    opened: int = 0


@dataclass(slots=True)
class ChunkServerRecord:
    addr: str
    # Being emptied before it leaves (dfs chunkserver drain).
    draining: bool = False
    # The zone it named when it last registered ("": its host's).
    zone: str = ""


@dataclass(slots=True)
class StoredReply:
    created: float
    errno: int
    result: object
