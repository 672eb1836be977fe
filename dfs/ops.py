"""Every operation on the wire: its name, its fields and their types.

This module is the protocol's single source of truth. Servers register a
handler per operation name and the RPC layer checks each request against the
schema below before the handler runs, so a handler can trust its arguments'
types. Replies are documented beside each operation; attribute records are
`dfs.records.Attr` dictionaries.

A field type of `Opt(T)` may be absent (the handler receives None).
`idempotent` operations may be retried by a client after a lost connection;
the rest carry a request token so the metaserver can answer a retry from its
memory instead of applying it twice.
"""

import errno
from dataclasses import dataclass, field

from .errors import DfsError


@dataclass(frozen=True)
class Opt:
    kind: type | tuple


@dataclass(frozen=True)
class Op:
    name: str
    fields: dict = field(default_factory=dict)
    idempotent: bool = False
    # Answered once something happens or a wait the caller names is over
    # (a long poll): its time is no latency, and is left out of the histogram.
    waits: bool = False


_TYPE_NAMES = {int: "an integer", bytes: "bytes", str: "a string", bool: "a boolean",
               list: "a list", dict: "a map", float: "a number"}


def _matches(value, kind) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


# Per operation, its fields as (name, exact type or None, accepted types,
# optional), built on first use. Keyed by id with the Op kept alongside, so an
# id is never reused while its entry exists (an Op holds a dict: unhashable).
_FIELD_TABLES: dict[int, tuple[Op, tuple]] = {}


def _field_table(op: Op) -> tuple:
    entry = _FIELD_TABLES.get(id(op))
    if entry is None or entry[0] is not op:
        table = []
        for name, kind in op.fields.items():
            optional = isinstance(kind, Opt)
            if optional:
                kind = kind.kind
            # A value of exactly this type passes at once; others go to _matches.
            exact = kind if isinstance(kind, type) else None
            table.append((name, exact, kind, optional))
        entry = _FIELD_TABLES[id(op)] = (op, tuple(table))
    return entry[1]


def check_fields(op: Op, args) -> dict:
    """Return the arguments with absent optional fields set to None, or raise EINVAL."""
    if not isinstance(args, dict):
        raise DfsError(errno.EINVAL, f"{op.name}: arguments must be a map")
    checked = {}
    present = 0
    for name, exact, kind, optional in _field_table(op):
        value = args.get(name)
        if value is None:
            if not optional:
                raise DfsError(errno.EINVAL, f"{op.name}: missing field {name!r}")
        else:
            present += 1
            if type(value) is not exact and not _matches(value, kind):
                raise DfsError(errno.EINVAL,
                               f"{op.name}: field {name!r} must be {_TYPE_NAMES.get(kind, kind)}")
        checked[name] = value
    if len(args) > present:
        unknown = set(args) - set(op.fields)
        if unknown:
            raise DfsError(errno.EINVAL,
                           f"{op.name}: unknown field(s) {sorted(map(str, unknown))}")
    return checked


def _ops(*ops: Op) -> dict:
    return {op.name: op for op in ops}


# ---------------------------------------------------------------------------
# Metaserver, as seen by clients (FUSE mounts, the dfs command, the CSI plugin).
# `uid`/`gid` are the caller's credentials, used as owner of new inodes.
# `session` is the id returned by session_open.
META = _ops(
    # -> {session, chunk_size, block_size, session_ttl, cluster, zones}
    # zones (also in session_renew's reply): those of the chunk servers that
    # registered from the host this call came from, where its mount reads first.
    # `fence` [directory ino, epoch]: the session may change anything only
    # while the directory's attachment epoch is that one (see `fence`); EROFS
    # at once if it is not.
    Op("session_open", {"host": str, "mountpoint": str, "pid": int, "fence": Opt(list)}),
    # -> {cluster}: the database's cluster id; EREMCHG if the database is not
    # cluster `cluster`'s (one started on an empty disk; 0 asks without
    # checking): a mount and the CSI controller check this on every
    # reconnection, before anything else, so they never act on another
    # cluster's inodes.
    Op("cluster_check", {"cluster": int}, idempotent=True),
    # -> {zones}; ESTALE if the session expired (the client opens a new one)
    Op("session_renew", {"session": int}, idempotent=True),
    Op("session_close", {"session": int}, idempotent=True),

    # `reader` (protocol 3): the session that asks. A request naming a folder
    # another session holds an exclusive lease on waits until it is let go of
    # (see dir_lease); the holder's own requests do not.
    # -> Attr of the child and "offset": where readdir lists it (the entries
    # after it are readdir's from that offset on)
    Op("lookup", {"parent": int, "name": bytes, "reader": Opt(int)}, idempotent=True),
    # -> Attr; walks `path` (absolute, '/'-separated) from the root
    Op("resolve", {"path": bytes}, idempotent=True),
    Op("getattr", {"ino": int, "reader": Opt(int)}, idempotent=True),
    # Every change to the namespace may name the `writer`: the session it is
    # made for. A session whose fence (session_open) no longer holds is
    # refused with EROFS, as it is for chunk_write, reserve and commit.
    # changes: any of mode, uid, gid, size, atime, mtime (ns) and atime_now,
    # mtime_now (bool). -> Attr
    Op("setattr", {"ino": int, "changes": dict, "writer": Opt(int), "token": Opt(bytes)}),
    # The operations from mknod to rename answer with "dirs" besides: the Attr of
    # each folder they changed (one made or renamed included), as the change left
    # it, by inode number (the kernel forgets a folder's attributes after every
    # change in it; these spare asking again).
    # mode carries the file type bits (S_IFREG, S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK).
    # With `session`, the new file is held open by that session (as by `open`),
    # and a regular file's reply carries "granted" besides, as `reserve` with
    # end 0 would answer (0: ask with `reserve`). -> Attr
    Op("mknod", {"parent": int, "name": bytes, "mode": int, "rdev": int, "uid": int,
                 "gid": int, "session": Opt(int), "writer": Opt(int), "token": Opt(bytes)}),
    Op("mkdir", {"parent": int, "name": bytes, "mode": int, "uid": int, "gid": int,
                 "writer": Opt(int), "token": Opt(bytes)}),
    Op("symlink", {"parent": int, "name": bytes, "target": bytes, "uid": int, "gid": int,
                   "writer": Opt(int), "token": Opt(bytes)}),
    Op("link", {"ino": int, "parent": int, "name": bytes, "writer": Opt(int),
                "token": Opt(bytes)}),
    # A file losing its last name goes to the trash when the metaserver
    # keeps one (--trash-hours), unless `trash` is false. -> {"dirs"}
    Op("unlink", {"parent": int, "name": bytes, "trash": Opt(bool), "writer": Opt(int),
                  "token": Opt(bytes)}),
    Op("rmdir", {"parent": int, "name": bytes, "writer": Opt(int), "token": Opt(bytes)}),
    # flags: 0, RENAME_NOREPLACE or RENAME_EXCHANGE (below), as in renameat2(2)
    Op("rename", {"parent": int, "name": bytes, "newparent": int, "newname": bytes,
                  "flags": int, "writer": Opt(int), "token": Opt(bytes)}),
    # -> {"target": bytes}
    Op("readlink", {"ino": int}, idempotent=True),
    # Entries after `offset` (0 = from the start), at most `limit`.
    # -> {"entries": [[name, Attr, next_offset], ...], "eof": bool}
    # Offsets are stable: an entry keeps its offset while it exists.
    Op("readdir", {"ino": int, "offset": int, "limit": int, "reader": Opt(int)},
       idempotent=True),
    # Directory leases (metaserver/dirleases.py): while a session holds one on
    # a folder, a change by anyone else that adds a name to it is answered
    # only after the holder let go (or its lease ran out), so the holder may
    # answer by itself that a name is not there.
    # An `exclusive` lease (protocol 3) is one no other session holds beside:
    # its holder may change the folder before telling the metaserver
    # (changes_ahead), and every request of another session naming the folder
    # waits until the holder let go, having sent those changes. Refused (a
    # shared lease instead) where a quota counts inodes.
    # -> {"names": [name, ...] in the folder now, "number": the grant's,
    #     "instance": the metaserver run's id, "lease": seconds it lasts past
    #     each poll, "exclusive": whether it is, and if so "attr": the folder's
    #     Attr}; EFBIG if the folder has too many names to lease, EMFILE if
    #     the session holds too many leases.
    Op("dir_lease", {"session": int, "ino": int, "exclusive": Opt(bool)}, idempotent=True),
    # Let go of the `released` [folder, number] pairs, renew the session's
    # other leases, and wait up to `wait` seconds (at most 1) for a recall.
    # -> {"recall": [[folder, number], ...] to let go of and release, "held":
    #     [number, ...] of every lease the session still has and may use (a
    #     recalled one is not renewed), "instance", "lease"}
    Op("dir_poll", {"session": int, "released": list, "wait": float}, idempotent=True,
       waits=True),
    # `count` inode numbers (1..4096) for the session to give the files and
    # folders it makes ahead: never handed out again, whether used or not.
    # -> {"first": the first of them, "count"}
    Op("inode_grant", {"session": int, "count": int}),
    # Changes the session made ahead in folders it holds exclusive leases on,
    # 1 to 1024 of them, each applied on its own, in order, all in one commit:
    #   ["create", parent, name, mode, uid, gid, ino, time, hold]: a regular
    #     file; `ino` from inode_grant, `time` (ns) its atime, mtime and ctime
    #     and the folder's mtime, `hold`: the session holds it open (as
    #     mknod's `session`)
    #   ["mkdir", parent, name, mode, uid, gid, ino, time]: a folder
    #   ["unlink", parent, name, time]
    #   ["rename", parent, name, newname, time]: within the folder, to a name
    #     not there (RENAME_NOREPLACE)
    # With `token`, a retry is answered as the first try was.
    # -> {"results": [[0, reply] or [errno, message], ...] in order}, where a
    #    reply is the Attr of a new inode with "dirs", or {"dirs"}
    Op("changes_ahead", {"session": int, "items": list, "token": Opt(bytes)},
       idempotent=True),
    # Records that `session` holds the inode open once more, so an unlink keeps
    # its data until the matching `release`. The hold lives in the metaserver's
    # memory: after reconnecting, a client re-announces every inode it holds
    # with `count` (its number of open handles, which sets rather than adds),
    # before any other request on the new connection. After a restart the
    # metaserver takes a restored session's next request naming it (any but a
    # re-announce) as the end of its re-announce.
    # `token` is ignored (accepted from older clients): a retried open at worst
    # over-counts until the next re-announce. A re-announce also says whether
    # the session's writes to the inode are `quiet` (see commit).
    # -> Attr, plus "changing": another session may have synced writes to the
    # file without recording them yet, so no cache of it is to be trusted.
    Op("open", {"ino": int, "session": int, "token": Opt(bytes), "count": Opt(int),
                "quiet": Opt(bool)}, idempotent=True),
    # One handle fewer; the last one lets an unlinked inode go.
    Op("release", {"ino": int, "session": int}, idempotent=True),
    # flags: XATTR_CREATE (1), XATTR_REPLACE (2)
    Op("setxattr", {"ino": int, "name": bytes, "value": bytes, "flags": int,
                    "writer": Opt(int)}),
    Op("getxattr", {"ino": int, "name": bytes}, idempotent=True),   # -> {"value"}
    Op("listxattr", {"ino": int}, idempotent=True),                 # -> {"names"}
    Op("removexattr", {"ino": int, "name": bytes, "writer": Opt(int)}),
    # Quota-aware: inside a quota directory the quota is the filesystem size.
    # -> {bsize, blocks, bfree, bavail, files, ffree, namemax}
    Op("statfs", {"ino": int}, idempotent=True),

    # Data path. A chunk is (id, version) on a list of chunk servers.
    # -> {"chunk": id or 0 for a hole, "version", "servers": [[csid, "host:port"], ...],
    #     "zones": [the zone of each of those servers, in the same order]}
    # (zones is a list of its own so that clients older than it read servers as before.)
    Op("chunk_read", {"ino": int, "index": int}, idempotent=True),
    # Allocates the chunk if needed and grants a write lease; live replicas are
    # brought to the returned version first. -> same shape as chunk_read, plus
    # "lease_until" (metaserver clock, seconds). `failed` (optional): the
    # "host:port" of replicas that failed this client; they are dropped and
    # the survivors moved to a new version, so the failed ones can never serve
    # or accept this chunk again.
    Op("chunk_write", {"ino": int, "index": int, "session": int, "failed": Opt(list)},
       idempotent=True),
    # Reserve quota for the file to grow to at least `end` bytes.
    # -> {"granted": end the client may write up to without asking again}; EDQUOT.
    Op("reserve", {"ino": int, "session": int, "end": int}, idempotent=True),
    # After data is on every replica: the file is at least `size` bytes long
    # and was modified at `mtime` (ns). With `quiet`, the session may go on
    # to sync writes that do not grow the file (fdatasync) without a commit
    # each, recording their mtime within a second; until a commit without
    # `quiet` or its last release, other sessions' opens see "changing".
    # -> Attr
    Op("commit", {"ino": int, "session": int, "size": int, "mtime": int,
                  "quiet": Opt(bool)}, idempotent=True),

    # Move directory `ino`'s attachment epoch on (the CSI controller does, each
    # time it publishes a volume with one writing node, or unpublishes it).
    # Sessions bound to an older epoch are refused every change from then on,
    # and the chunks they lease move to a new version before the reply, so
    # their writes in flight are refused too. EAGAIN for one lease length
    # after a restart if sessions from before it are bound to `ino`.
    # -> {"epoch": the new epoch}
    Op("fence", {"ino": int, "token": Opt(bytes)}),

    # Copy directory `ino`'s whole tree as `name` in directory `parent`, in one
    # transaction, sharing every file's chunks: copy-on-write, the first write
    # to a shared chunk (or a truncation into it) copies it first. The copy
    # keeps modes, owners, times, xattrs (not the root's own `trusted.dfs.`
    # ones), symlinks, hard links inside the tree and replication factors; not
    # quotas or attachment epochs. It is charged to the quotas above `parent`
    # (EDQUOT). Write leases on the tree's chunks end first (their replicas
    # move to a new version) and none is granted until the copy is made, so
    # it is one point in time of the tree. EINVAL if `parent` is `ino` or
    # inside it, ENOTDIR if `ino` is no directory, EEXIST if `name` exists.
    # -> Attr of the copy's root, plus "bytes" and "inodes": what the copy
    # holds, as quotas count it (file sizes; each inode once)
    Op("snapshot", {"ino": int, "parent": int, "name": bytes, "token": Opt(bytes)}),

    # Quotas on directories: 0 means unlimited. -> QuotaInfo dict
    Op("quota_set", {"ino": int, "bytes": int, "inodes": int}, idempotent=True),
    Op("quota_get", {"ino": int}, idempotent=True),
    Op("quota_list", {}, idempotent=True),   # -> {"quotas": [QuotaInfo + "path"]}

    # Replication factor (copies of each chunk, 1..16, else EINVAL). On a
    # directory: what files and directories created inside it from now on
    # inherit. On a regular file: its own chunks' count; raising it makes
    # re-replication add copies, lowering it makes the metaserver delete
    # the extra ones.
    # -> {"replicas": the stored factor (0 = none), "effective": what applies}
    Op("replicas_set", {"ino": int, "replicas": int}, idempotent=True),
    Op("replicas_get", {"ino": int}, idempotent=True),

    # -> {chunkservers: [{csid, addr, zone, alive, draining, capacity, used, chunks}],
    #     files, directories, chunks, under_replicated,
    #     replicating (copies of chunks short of replicas in progress),
    #     balancing (copies beyond the factor in progress: evening out the
    #     disks, spreading a chunk over zones), misplaced (chunks whose
    #     copies are in fewer zones than they could be),
    #     bad_replicas (reports since start),
    #     recent_bad: [{chunk, csid, version, at}], backup: the newest
    #     BackupInfo or None, backup_error: why the last backup failed or None,
    #     restore: {"at", "hold_until"} if the metadata was restored from a
    #     backup, else None, metaloggers: [{"name", "seq", "behind" (commits),
    #     "seen" (seconds ago), "silent" (not heard from for a minute)}], ...}
    Op("status", {}, idempotent=True),

    # Chunk servers leaving the cluster (metaserver/cluster.py).
    # `drain` true: the server takes no new chunk, each chunk it holds is
    # copied to a server that stays and its replica there is then deleted;
    # false: it takes chunks again. Kept across restarts.
    # -> the server's entry as `status` lists it, its chunks counted
    Op("chunkserver_drain", {"csid": int, "drain": bool}, idempotent=True),
    # Forget a stopped chunk server: its record, its replicas in the chunk
    # table, the garbage it was to delete. EBUSY while it is alive, or while
    # it holds the only replica of some chunk (unless `force`: those chunks
    # are lost). -> {"dropped": replicas forgotten, "lost": chunks left with none}
    Op("chunkserver_remove", {"csid": int, "force": bool}, idempotent=True),

    # What an administrator asks about (metaserver/reports.py), read-only.
    # The sessions of mounts and other clients -> {"sessions": [{"session",
    # "host", "mountpoint", "pid", "opened" (unix seconds, 0 if unknown),
    # "expires" (seconds until it lapses unless renewed), "open" (inodes it
    # holds open), "reserving" (files under a byte quota it holds room for),
    # "reserved" (that room beyond their sizes, counted as used), "fence":
    # [directory ino, epoch] or None, "restored" (from before the
    # metaserver's restart and silent since), "folder_leases" (dir_lease),
    # "exclusive_leases" (those of them exclusive)}]}
    Op("session_list", {}, idempotent=True),
    # A file's chunks from index `start` on, at most `limit` (1..4096)
    # -> {"chunks": [{"index", "chunk", "version", "wanted" (copies),
    #     "servers": [[csid, "host:port", alive], ...], "zones": [each one's zone]}],
    #     "next": the index to pass as `start`, or None after the last, "chunk_size"}
    Op("chunk_list", {"ino": int, "start": int, "limit": int}, idempotent=True),
    # What lies beneath a directory, itself included (or a file alone)
    # -> {"files", "directories", "symlinks", "others", "bytes" (file sizes),
    #     "chunks" (each counted once, however many files share it),
    #     "under_replicated", "unavailable" (no live replica)}
    Op("summary", {"ino": int}, idempotent=True),

    # Backups of the metadata (metaserver/backups.py): consistent copies of
    # the whole database, made while serving and kept in the metaserver's
    # backup folder (the newest --backup-keep of them). BackupInfo records:
    # {"name", "size", "at" (unix seconds), "txn" (the last change it holds),
    # "sha256"}.
    # -> BackupInfo of a backup made now; ENOSPC or EIO if it cannot be written
    Op("backup_take", {}, idempotent=True),
    # -> {"backups": [BackupInfo, ...]}, oldest first
    Op("backup_list", {}, idempotent=True),
    # At most MAX_DATA bytes of backup `name` from `offset` on; b"" past its
    # end. ENOENT if there is no such backup (or it was pruned meanwhile).
    # -> {"data": bytes, "crc": its CRC32C (dfs/transit.py)}
    Op("backup_read", {"name": str, "offset": int, "length": int}, idempotent=True),

    # Metadata replication to metaloggers (metaserver/changelog.py). A
    # position is (history, seq): the last commit a copy holds. `follower`
    # names the metalogger that asks (shown by `status`).
    # The parts of the commits after position (history, after), from part
    # `part` of commit after + 1 on (0 unless a reply ended inside a commit),
    # waiting up to `wait` seconds (at most 30) for a commit if there is none.
    # ESTALE if they are no longer held or the history is another: copy again.
    # -> {"history", "seq": the newest commit, "parts": [[seq, part, last, data]],
    #     "tables": the metaserver's table names, whose positions the indexes
    #     below are, "crcs": the CRC32C of each part's data} where data is a
    #     msgpack list of [table index, key, value or nil (a delete)], in
    #     order; a commit is applied whole, once its last part is in
    Op("log_read", {"follower": str, "history": int, "after": int, "part": int,
                    "wait": float}, idempotent=True, waits=True),
    # A copy of the database to start from -> LogCopy record {"name", "size",
    # "history", "seq", "restores"}; ENOSPC or EIO if it cannot be written
    Op("log_copy", {"follower": str}, idempotent=True),
    # At most MAX_DATA bytes of copy `name` from `offset` on; ENOENT once the
    # copy is replaced or removed -> {"data": bytes, "crc": as backup_read's}
    Op("log_copy_read", {"follower": str, "name": str, "offset": int, "length": int},
       idempotent=True),

    # fsck, one page of the chunk table: the chunks with id > `after`, at most
    # `limit`, each replica asked for its version (with `verify`, every block's
    # checksum is read too). With `repair`, missing, stale and corrupt replicas
    # are dropped (re-replication restores the replication factor from a good one).
    # -> {"checked": n, "next": id to pass as `after` (0 = done),
    #     "problems": [{"chunk", "kind", "csid", "detail", "repaired"}]}
    # kinds: missing (replica absent), stale (older version), corrupt
    # (checksum), dead (server not heard from), under_replicated, lost (no good
    # replica left).
    Op("fsck_chunks", {"after": int, "limit": int, "verify": bool, "repair": bool},
       idempotent=True),
    # fsck, what every live chunk server holds against the chunk table: kinds
    # orphan (no such chunk), stale (older version), unlisted (right version,
    # not recorded). With `repair` they are deleted. -> {"problems": [...]}
    Op("fsck_servers", {"repair": bool}, idempotent=True),
)

# The longest name in a folder, in bytes.
NAME_MAX = 255
# What a folder's size reads as.
DIR_SIZE = 4096


def check_name(name: bytes) -> None:
    """EINVAL, EEXIST or ENAMETOOLONG unless `name` may name a new entry."""
    if not name or b"/" in name or b"\0" in name:
        raise DfsError(errno.EINVAL, f"invalid file name {name!r}")
    if name in (b".", b".."):
        raise DfsError(errno.EEXIST, f"{name.decode()} always exists")
    if len(name) > NAME_MAX:
        raise DfsError(errno.ENAMETOOLONG, f"name of {len(name)} bytes exceeds {NAME_MAX}")


# rename's flags, as renameat2(2) numbers them.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# The trash (--trash-hours): its folder in the root, and the xattr that holds
# the path a file in it was removed from (metaserver/trash.py, dfs/trash.py).
TRASH_NAME = b".trash"
TRASH_PATH_XATTR = b"trusted.dfs.trash.path"

# Longest zone name a chunk server may give (cs_register).
ZONE_MAX = 64


def check_zone(zone: str) -> None:
    if not (0 < len(zone) <= ZONE_MAX and zone.isprintable()
            and not any(c.isspace() for c in zone)):
        raise DfsError(errno.EINVAL, f"a zone is 1 to {ZONE_MAX} printable characters "
                                     f"without spaces, got {zone!r}")


# Metaserver, as seen by chunk servers.
META_CS = _ops(
    # chunks: [[chunk_id, version], ...] held on disk. `cluster`: the id of
    # the cluster the server registered with before (none on its first); a
    # database of another cluster (a metaserver started on an empty disk)
    # refuses it with EREMCHG, so it keeps its chunks rather than deleting them
    # as unknown.
    # `position`: [history, seq, time] of the database as the server last
    # kept it from a reply; a database put back to an older state (same
    # history, an older commit; or another history not restored since that
    # time) is refused with EREMCHG too: reconciling with it would delete the
    # chunks written since.
    # `zone`: the failure domain the server is in (metaserver/registry.py);
    # absent, its host. Sent only when set, so that older metaservers, which
    # refuse fields they do not know, still take a server that names none.
    # -> {"csid": id (kept across restarts), "delete": [chunk ids to drop],
    #     "cluster": the cluster's id, for the server to keep, "position":
    #     the database's [history, seq, the metaserver's time]}
    Op("cs_register", {"csid": Opt(int), "addr": str, "capacity": int, "used": int,
                       "chunks": list, "cluster": Opt(int), "position": Opt(list),
                       "zone": Opt(str)}),
    # -> {"delete": [chunk ids], "replicate": [[chunk, version, "host:port"], ...],
    #     "position": as cs_register's}
    Op("cs_heartbeat", {"csid": int, "capacity": int, "used": int}),
    # A replica failed its checksum; the metaserver drops and repairs it.
    Op("cs_bad_chunk", {"csid": int, "chunk": int, "version": int}),
)

# How many pieces one write_extents request may carry: enough for a burst of
# small random writes between two fsyncs, few enough that their framing fits
# in the room MAX_FRAME leaves beside MAX_DATA.
MAX_EXTENTS = 1024

# A chunk's checksum block: chunk servers keep a CRC32C per block, cut read
# replies where blocks begin (dfs/transit.py), and the metaserver tells mounts
# of it (session_open's block_size), whose random reads fetch whole blocks.
BLOCK_SIZE = 64 * 1024

# Chunk servers, as seen by clients, the metaserver and other chunk servers.
# `version` guards every access: a replica whose version differs is stale
# (ESTALE) and is neither read nor written.
CHUNK = _ops(
    # Make an empty replica at `version`, or move an existing one to it (data
    # kept); ESTALE if the existing one is already newer.
    Op("create", {"chunk": int, "version": int}, idempotent=True),
    Op("set_version", {"chunk": int, "old": int, "new": int}, idempotent=True),
    # With `sync`, the whole replica is durable on disk before the reply, as
    # after a `sync` request. `crc`: the CRC32C of `data` as sent
    # (dfs/transit.py); EBADMSG, nothing written, if the data does not match.
    Op("write", {"chunk": int, "version": int, "offset": int, "data": bytes,
                 "sync": Opt(bool), "crc": Opt(int)}, idempotent=True),
    # Several writes in one request: [[offset, data, crc], ...] (crc as
    # write's, optional), applied in order (where two overlap the later
    # wins), at most MAX_EXTENTS extents and MAX_DATA bytes in all; all are
    # checked before any is applied. Retrying the whole request is safe.
    Op("write_extents", {"chunk": int, "version": int, "extents": list, "sync": Opt(bool)},
       idempotent=True),
    # -> {"data": bytes, "crcs": the CRC32C of each piece of it cut where a
    # 64 KiB block of the chunk begins (dfs/transit.py)}, zeros beyond what
    # was written, EIO on checksum failure
    Op("read", {"chunk": int, "version": int, "offset": int, "length": int}, idempotent=True),
    # Durable on disk before the reply.
    Op("sync", {"chunk": int, "version": int}, idempotent=True),
    # Cut the replica to `length` bytes (what lies beyond reads as zeros).
    Op("truncate", {"chunk": int, "version": int, "length": int}, idempotent=True),
    Op("delete", {"chunk": int}, idempotent=True),
    # Make a replica of `chunk` at `version` from this server's own replica of
    # `source` at `source_version`: its first `length` bytes, all of it when
    # absent (the copy-on-write of a chunk that snapshots share). A sound
    # replica already at `version` is kept; ESTALE if the source is at another
    # version. -> {"length", "version"}
    Op("copy", {"chunk": int, "version": int, "source": int, "source_version": int,
                "length": Opt(int)}, idempotent=True),
    # Fetch the whole chunk at `version` from another chunk server; a sound
    # replica already at `version` is kept. -> {"length", "version"}
    Op("replicate", {"chunk": int, "version": int, "source": str}, idempotent=True),
    # -> {"length": bytes stored, "version"}; EIO if the replica is known to
    # fail its checksums (so it is never confirmed as a good copy).
    Op("chunk_info", {"chunk": int}, idempotent=True),
    # Every replica held. -> {"chunks": [[chunk, version], ...]}
    Op("list_chunks", {}, idempotent=True),
    # Read the whole replica, checking every block. -> like chunk_info; EIO
    # (and a report to the metaserver) if a block fails its checksum.
    Op("verify", {"chunk": int}, idempotent=True),
)
