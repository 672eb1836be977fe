"""The `dfs` command: run a local cluster, mount, and inspect a cluster."""

import argparse
import errno
import json
from dataclasses import asdict
import os
import sys
import time
from pathlib import Path

import trio

from . import backupfetch, fsck, logs, mounts, reports, trash
from .cluster import LocalCluster
from .config import ConfigError, add_cluster_args, add_log_level_arg, cluster_from_args
from .errors import DfsError
from .mount import (MountOptions, add_async_dirops_option, add_mount_options,
                    add_read_cache_option, add_xattrs_option, mount_background,
                    options_from_args, run_foreground)
from .ops import META
from .records import BackupInfo, QuotaInfo
from .reports import human_size
from .rpc import Client

DESCRIPTION = """\
dfs: a distributed filesystem.

Start a local cluster and mount it:   dfs up --data-dir /var/lib/dfs --mount /mnt/dfs
Stop it:                              dfs down --data-dir /var/lib/dfs
Mount a remote cluster:               dfs mount --meta HOST:PORT --secret-file F /mnt/dfs

Commands that talk to a cluster take either --meta HOST:PORT (with the secret
from --secret-file, $DFS_SECRET or $DFS_SECRET_FILE) or --data-dir DIR of a
local cluster. Run 'dfs COMMAND --help' for each command."""


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "")
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1048576, 64M, 10G)")
    if value < 0:
        raise argparse.ArgumentTypeError("a size cannot be negative")
    return value


def _call(args, op: str, **fields):
    cluster = cluster_from_args(args)

    async def run():
        client = Client(cluster.meta, cluster.secret, META, retry_for=5.0)
        try:
            return await client.call(op, **fields)
        finally:
            await client.aclose()

    return trio.run(run)


class DfsPath(str):
    """A path inside dfs. `local` is (the local path, its mount point) when it
    was given as a path on a dfs mount of this host."""
    local: tuple[str, str] | None = None


def _dfs_path(text: str) -> DfsPath:
    """A command-line path: inside dfs, or on a dfs mount here (translated)."""
    on_mount = mounts.inside_dfs(text)
    if on_mount is not None:
        path = DfsPath(on_mount[0])
        path.local = (text, on_mount[1])
        return path
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a path inside dfs starting with '/' (e.g. /volumes/pvc-1), or a "
            "path on a dfs mount of this host")
    return DfsPath(text)


def _check_local(path: str, ino: int) -> None:
    """A path given on a local mount must be the same file in the cluster the
    command talks to; else that mount is another cluster's."""
    local = getattr(path, "local", None)
    if local is None or os.path.realpath(local[0]) == local[1]:
        return  # a mount's root shows as inode 1 whatever it is
    try:
        here = os.stat(local[0]).st_ino
    except FileNotFoundError:
        return
    if here != ino:
        raise DfsError(errno.EXDEV, (
            f"{local[0]} is on the dfs mount at {local[1]}, which is not of the cluster asked: "
            f"there {path} is inode {here}, here inode {ino}. Give that mount's cluster "
            "(--meta or --data-dir)"))


def _resolve(args, path: str) -> int:
    ino = _call(args, "resolve", path=path.encode())["ino"]
    _check_local(path, ino)
    return ino


# ---- commands --------------------------------------------------------------

def cmd_up(args) -> int:
    cluster = LocalCluster(args.data_dir)
    print(f"dfs: starting a local cluster in {cluster.dir}")
    layout = cluster.up(args.mount, args.chunkservers, args.replicas, args.chunk_size,
                        mount_options=MountOptions(read_cache_mib=args.read_cache,
                                                   xattrs=args.xattrs,
                                                   async_dirops=args.async_dirops),
                        trash_hours=args.trash_hours)
    print(f"dfs: cluster up: metaserver {layout.meta}, {len(layout.chunkservers)} chunk "
          f"servers, {layout.replicas} replicas")
    print(f"dfs: mounted at {layout.mount}")
    return 0


def cmd_down(args) -> int:
    cluster = LocalCluster(args.data_dir)
    if cluster.load() is None:
        print(f"dfs: no cluster in {cluster.dir}; nothing to stop")
        return 0
    cluster.down()
    print(f"dfs: cluster in {cluster.dir} stopped")
    return 0


def cmd_mount(args) -> int:
    cluster = cluster_from_args(args)
    mountpoint = os.path.realpath(args.mountpoint)
    if not os.path.isdir(mountpoint):
        raise DfsError(20, f"{mountpoint} is not a directory")
    if mounts.is_mounted(mountpoint):
        if not mounts.is_broken(mountpoint):
            print(f"dfs: {mountpoint} is already mounted")
            return 0
        mounts.unmount(mountpoint, lazy=True)
    if args.foreground:
        logs.setup(args.log_level)
        return run_foreground(cluster, mountpoint, options_from_args(args))
    mount_background(cluster, mountpoint, options_from_args(args), args.log_file)
    print(f"dfs: mounted {cluster.meta}:{args.subdir} at {mountpoint}")
    return 0


def cmd_umount(args) -> int:
    mountpoint = os.path.realpath(args.mountpoint)
    if not mounts.is_mounted(mountpoint):
        print(f"dfs: {mountpoint} is not a dfs mount")
        return 0
    mounts.unmount(mountpoint, lazy=args.lazy)
    print(f"dfs: unmounted {mountpoint}")
    return 0


def cmd_status(args) -> int:
    status = _call(args, "status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    servers = status["chunkservers"]
    alive = [cs for cs in servers if cs["alive"]]
    print(f"cluster: {status['cluster']:x}")
    print(f"chunk servers: {len(alive)} alive of {len(servers)}")
    for cs in servers:
        state = "alive" if cs["alive"] else "DEAD"
        print(f"  #{cs['csid']:<3} {cs['addr']:<22} {state:<6} zone {cs.get('zone', '?')}, "
              f"used {human_size(cs['used'])} of {human_size(cs['capacity'])}, "
              f"{cs['chunks']} chunks{_draining(cs)}")
    print(f"capacity: {human_size(sum(cs['capacity'] for cs in alive))}, "
          f"used {human_size(sum(cs['used'] for cs in alive))}")
    print(f"files: {status['files']}, directories: {status['directories']}, "
          f"data: {human_size(status['bytes'])}")
    print(f"chunks: {status['chunks']}, under-replicated: {status['under_replicated']}")
    zones = {cs.get("zone") for cs in alive if not cs["draining"]}
    print(f"zones: {len(zones)}" + ("" if len(zones) > 1 else
          ": every chunk's copies are in it (give chunk servers --zone, or put them on "
          "more hosts)"))
    if status.get("misplaced"):
        print(f"misplaced: {status['misplaced']} chunk(s) with copies sharing a zone; "
              "copied to another zone as its servers have room")
    if status.get("balancing"):
        print(f"balancing: {status['balancing']} chunk(s) being moved to the emptiest disk "
              "or to another zone")
    _print_metadata(status)
    _print_health(status, len(servers) - len(alive))
    return 0


def cmd_sessions(args) -> int:
    listed = _call(args, "session_list")["sessions"]
    print(json.dumps(listed, indent=2) if args.json else reports.format_sessions(listed))
    return 0


def cmd_info(args) -> int:
    found = reports.info(cluster_from_args(args), args.path)
    _check_local(args.path, found.attr["ino"])
    print(json.dumps(found.to_wire(), indent=2) if args.json else reports.format_info(found))
    return 0


def _draining(server: dict) -> str:
    if not server["draining"]:
        return ""
    if server["chunks"]:
        return ", DRAINING (its chunks are being copied to the others)"
    return (f", drained: stop it, then 'dfs chunkserver remove {server['csid']}'")


def _server_id(args) -> int:
    """The csid of a chunk server named by its number (as `dfs status` shows
    it, with or without '#') or its address."""
    name = args.server.removeprefix("#")
    if name.isdigit():
        return int(name)
    found = [cs["csid"] for cs in _call(args, "status")["chunkservers"] if cs["addr"] == name]
    if not found:
        raise DfsError(2, f"no chunk server at {name} (see 'dfs status')")
    return found[0]


def cmd_chunkserver_drain(args) -> int:
    server = _call(args, "chunkserver_drain", csid=_server_id(args), drain=True)
    print(f"chunk server #{server['csid']} {server['addr']} is draining: it takes no new "
          f"chunk, and its {server['chunks']} chunk(s) are copied to the others, then deleted "
          "from it. 'dfs status' shows how many are left.")
    return 0


def cmd_chunkserver_resume(args) -> int:
    server = _call(args, "chunkserver_drain", csid=_server_id(args), drain=False)
    print(f"chunk server #{server['csid']} {server['addr']} takes new chunks again "
          f"({server['chunks']} held)")
    return 0


def cmd_chunkserver_remove(args) -> int:
    csid = _server_id(args)
    removed = _call(args, "chunkserver_remove", csid=csid, force=args.force)
    print(f"chunk server #{csid} removed: {removed['dropped']} replica(s) forgotten"
          + (f", {removed['lost']} chunk(s) LOST" if removed["lost"] else ""))
    return 0


def _print_metadata(status: dict) -> None:
    """The newest backup of the metadata, and a restore if there was one."""
    backup = status.get("backup")
    if backup:
        age = max(0, time.time() - backup["at"])
        print(f"metadata backup: {backup['name']}, {age / 60:.0f} min ago")
    else:
        print("metadata backup: none yet")
    if status.get("backup_error"):
        print(f"  the last backup FAILED: {status['backup_error']}")
    loggers = status.get("metaloggers", [])
    if not loggers:
        print("metaloggers: none (no copy of the metadata on another host: see "
              "dfs-metalogger --help)")
    for logger in loggers:
        print(f"metalogger {logger['name']}: {logger['behind']} commit(s) behind, heard from "
              f"{logger['seen']:.0f}s ago")
    restore = status.get("restore")
    if restore:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(restore["at"]))
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(restore["hold_until"]))
        print(f"metadata restored from a backup at {when}; chunks no file refers to are "
              f"kept until {until}")


def _print_health(status: dict, dead: int) -> None:
    """One line saying whether the cluster is healthy, then what is not."""
    bad = status.get("bad_replicas", 0)
    troubles = []
    if dead:
        troubles.append(f"{dead} chunk server(s) dead")
    if status["under_replicated"]:
        troubles.append(f"{status['under_replicated']} chunk(s) under-replicated")
    if status.get("replicating"):
        troubles.append(f"{status['replicating']} cop(ies) in progress")
    troubles += [f"metalogger {logger['name']} not heard from for {logger['seen']:.0f}s"
                 for logger in status.get("metaloggers", []) if logger["silent"]]
    print(f"health: {'DEGRADED: ' + '; '.join(troubles) if troubles else 'ok'}")
    if bad:
        print(f"bad replicas reported since the metaserver started: {bad}")
        for report in status.get("recent_bad", []):
            when = time.strftime("%H:%M:%S", time.localtime(report["at"]))
            print(f"  {when} chunk {report['chunk']} version {report['version']} "
                  f"on chunk server #{report['csid']} failed its checksum")


def cmd_fsck(args) -> int:
    report = fsck.run(cluster_from_args(args), verify=args.verify, repair=args.repair)
    if args.json:
        print(json.dumps(report.to_wire(), indent=2))
    else:
        print(fsck.format_report(report, args.repair))
    return fsck.exit_code(report)


def _print_quota(q: QuotaInfo) -> None:
    limit = human_size(q.bytes_limit) if q.bytes_limit else "unlimited"
    inodes = str(q.inodes_limit) if q.inodes_limit else "unlimited"
    print(f"{q.path or q.ino}: bytes {human_size(q.bytes_used)} of {limit}, "
          f"inodes {q.inodes_used} of {inodes}")


def cmd_quota_set(args) -> int:
    ino = _resolve(args, args.path)
    reply = _call(args, "quota_set", ino=ino, bytes=args.bytes, inodes=args.inodes)
    info = QuotaInfo.from_wire(reply)
    info.path = args.path
    _print_quota(info)
    return 0


def cmd_quota_get(args) -> int:
    info = QuotaInfo.from_wire(_call(args, "quota_get", ino=_resolve(args, args.path)))
    info.path = args.path
    if args.json:
        print(json.dumps(info.to_wire(), indent=2))
    else:
        _print_quota(info)
    return 0


def cmd_quota_ls(args) -> int:
    quotas = [QuotaInfo.from_wire(q) for q in _call(args, "quota_list")["quotas"]]
    if args.json:
        print(json.dumps([q.to_wire() for q in quotas], indent=2))
        return 0
    if not quotas:
        print("no quotas")
    for q in quotas:
        _print_quota(q)
    return 0


def _print_replicas(path: str, reply: dict) -> None:
    source = "its own" if reply["replicas"] else "the cluster default"
    print(f"{path}: {reply['effective']} replicas ({source})")


def cmd_replicas_set(args) -> int:
    reply = _call(args, "replicas_set", ino=_resolve(args, args.path), replicas=args.replicas)
    _print_replicas(args.path, reply)
    return 0


def cmd_replicas_get(args) -> int:
    reply = _call(args, "replicas_get", ino=_resolve(args, args.path))
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        _print_replicas(args.path, reply)
    return 0


def cmd_snapshot(args) -> int:
    parent, _, name = args.target.rstrip("/").rpartition("/")
    if not name:
        raise DfsError(22, f"{args.target!r}: give the new folder's path inside dfs, "
                           "e.g. /snapshots/db-monday")
    _call(args, "snapshot", ino=_resolve(args, args.source), parent=_resolve(args, parent or "/"),
          name=name.encode(), token=os.urandom(16))
    print(f"{args.target}: a snapshot of {args.source}")
    return 0


def cmd_fence(args) -> int:
    epoch = _call(args, "fence", ino=_resolve(args, args.path), token=os.urandom(16))["epoch"]
    print(epoch if args.quiet else f"{args.path}: attachment epoch {epoch}; mount it with "
                                   f"--subdir {args.path} --epoch {epoch}")
    return 0


def _print_backup(backup: BackupInfo) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(backup.at))
    print(f"{backup.name}  {when}  {human_size(backup.size)}")


def cmd_backup_now(args) -> int:
    _print_backup(BackupInfo.from_wire(_call(args, "backup_take")))
    return 0


def cmd_backup_ls(args) -> int:
    backups = _call(args, "backup_list")["backups"]
    if args.json:
        print(json.dumps(backups, indent=2))
        return 0
    if not backups:
        print("no backups yet: the metaserver takes one every --backup-interval, or run "
              "'dfs backup now'")
    for backup in backups:
        _print_backup(BackupInfo.from_wire(backup))
    return 0


def cmd_backup_get(args) -> int:
    backup, path = backupfetch.fetch(cluster_from_args(args), args.name, Path(args.target))
    print(f"{path}: backup {backup.name}, {human_size(backup.size)}, checksum verified")
    return 0


def cmd_trash_ls(args) -> int:
    found = trash.entries(cluster_from_args(args))
    if args.json:
        print(json.dumps([{**asdict(e), "entry": e.ref} for e in found], indent=2))
        return 0
    for entry in found:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(entry.removed))
        print(f"{entry.ref}  {human_size(entry.size)}  removed {when}  from {entry.path}")
    total = sum(entry.size for entry in found)
    print(f"{len(found)} file(s), {human_size(total)} in the trash")
    return 0


def cmd_trash_restore(args) -> int:
    for path in trash.restore(cluster_from_args(args), args.entries, args.to):
        print(f"restored {path}")
    return 0


def cmd_trash_purge(args) -> int:
    if not args.all and not args.entries:
        raise DfsError(22, "name the entries to delete (see 'dfs trash ls'), or --all")
    count = trash.purge(cluster_from_args(args), None if args.all else args.entries)
    print(f"deleted {count} file(s) from the trash")
    return 0


# ---- argument parsing ------------------------------------------------------

DFS_PATH_HELP = ("a path inside dfs (e.g. /volumes/pvc-1), or a path on a dfs mount of "
                 "this host")

def _report_command(sub, name: str, func, *positionals: str, **texts) -> None:
    """A command that asks a cluster and prints a report, or with --json its
    figures."""
    command = sub.add_parser(name, **texts)
    add_cluster_args(command)
    for positional in positionals:
        command.add_argument(positional, type=_dfs_path, help=DFS_PATH_HELP)
    command.add_argument("--json", action="store_true", help="machine-readable output")
    command.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfs", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start a local cluster on loopback and mount it",
                       description="Start one metaserver and N chunk servers on 127.0.0.1 in "
                                   "the background, with their data under DIR, and mount the "
                                   "filesystem at MNT. Safe to run again: running parts are "
                                   "left alone and an existing DIR keeps its data.")
    p.add_argument("--data-dir", required=True, metavar="DIR", help="folder for all data")
    p.add_argument("--mount", required=True, metavar="MNT", help="where to mount")
    p.add_argument("--chunkservers", type=int, default=3, metavar="N",
                   help="number of chunk servers (default 3)")
    p.add_argument("--replicas", type=int, default=2, metavar="R",
                   help="copies of each chunk (default 2)")
    p.add_argument("--chunk-size", type=_size, default=64 << 20, metavar="BYTES",
                   help="chunk size for a new cluster (default 64M)")
    p.add_argument("--trash-hours", type=float, default=0.0, metavar="H",
                   help="for a new cluster: keep removed files in /.trash this long (see "
                        "'dfs trash'; default 0, deleted at once)")
    add_read_cache_option(p)
    add_xattrs_option(p)
    add_async_dirops_option(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="unmount and stop a local cluster",
                       description="Unmount the local cluster's mount and stop its "
                                   "processes. Its data stays in DIR for the next 'dfs up'.")
    p.add_argument("--data-dir", required=True, metavar="DIR")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("mount", help="mount a cluster (or one folder of it)",
                       description="Mount a dfs cluster at MOUNTPOINT. Without --foreground "
                                   "the mount runs as a detached background process and the "
                                   "command returns once the mount is live.")
    add_cluster_args(p)
    add_mount_options(p)
    p.add_argument("--foreground", action="store_true", help="serve in this process")
    p.add_argument("--log-file", metavar="PATH", help="log of the background mount process")
    add_log_level_arg(p)
    p.add_argument("mountpoint")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount a dfs mount",
                       description="Unmount MOUNTPOINT; the mount process then exits.")
    p.add_argument("--lazy", action="store_true",
                   help="detach now even if busy (the last resort)")
    p.add_argument("mountpoint")
    p.set_defaults(func=cmd_umount)

    _report_command(sub, "status", cmd_status,
                    help="chunk servers, capacity, files and chunk health",
                    description="Show the cluster's chunk servers, capacity, files, chunks "
                                "and under-replicated chunks.")

    _report_command(sub, "sessions", cmd_sessions,
                    help="the mounts and other clients connected, and what they hold",
                    description="List every session the metaserver keeps: the host, mount "
                                "point and process of each mount (or CSI plugin, or dfs "
                                "command), when it was opened, how many files it holds open, "
                                "the room it holds under quotas for files being written, the "
                                "folder it is fenced to, and when it lapses if its client "
                                "stops renewing it. A session that lapses releases its "
                                "files: removed files it kept open are deleted then.")

    _report_command(sub, "info", cmd_info, "path",
                    help="where a file's chunks are; what a folder holds",
                    description="Show PATH's attributes and replication factor. For a file, "
                                "list each of its chunks with its version and the chunk "
                                "servers holding it, marking dead servers and under-replicated "
                                "chunks. For a folder, count what lies beneath it: files, "
                                "folders, bytes, chunks, and chunks under-replicated or "
                                "unavailable (no live copy). PATH is a path inside dfs (e.g. "
                                "/volumes/pvc-1) or a path on a dfs mount of this host.",
                    epilog="example: dfs info --data-dir /var/lib/dfs /volumes/pvc-1")

    p = sub.add_parser("fsck", help="check chunks against the chunk servers; --repair",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Check every chunk in the metadata against its chunk\n"
                                   "servers (missing, stale, corrupt, dead and under-replicated\n"
                                   "replicas, lost chunks) and every chunk server against the\n"
                                   "metadata (orphan replicas). A progress bar goes to stderr,\n"
                                   "the report to stdout.",
                       epilog="exit status: 0 healthy, 1 problems remain, 2 data lost\n"
                              "example: dfs fsck --data-dir /var/lib/dfs --verify --repair")
    add_cluster_args(p)
    p.add_argument("--verify", action="store_true",
                   help="read every replica whole and check each block's CRC (slow: reads "
                        "all data); without it only versions and presence are checked")
    p.add_argument("--repair", action="store_true",
                   help="drop missing, stale and corrupt replicas that have a good copy "
                        "(re-replication then restores R) and delete orphan replicas")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=cmd_fsck)

    p = sub.add_parser("chunkserver", help="take a chunk server out of the cluster: drain, "
                                           "remove",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Take a chunk server out without a chunk ever having fewer\n"
                                   "copies than its replication factor:\n"
                                   "  1. dfs chunkserver drain SERVER   (it takes no new chunk;\n"
                                   "     each of its chunks is copied to another server, then\n"
                                   "     deleted from it; 'dfs status' counts what is left)\n"
                                   "  2. once 'dfs status' says drained, stop the server\n"
                                   "  3. dfs chunkserver remove SERVER  (forgets it)\n"
                                   "A server that died for good can be removed at once:\n"
                                   "its chunks are copied from their other replicas as soon\n"
                                   "as it is seen dead.\n"
                                   "SERVER is the number 'dfs status' shows (#2 or 2) or the\n"
                                   "server's address (host:port).")
    csub = p.add_subparsers(dest="chunkserver_command", required=True, metavar="ACTION")

    def server_action(name: str, func, **texts) -> argparse.ArgumentParser:
        action = csub.add_parser(name, **texts)
        add_cluster_args(action)
        action.add_argument("server", metavar="SERVER", help="#N, N or host:port")
        action.set_defaults(func=func)
        return action

    server_action("drain", cmd_chunkserver_drain,
                  help="copy everything off a server and give it no new chunk")
    server_action("resume", cmd_chunkserver_resume,
                  help="stop draining a server: it takes new chunks again")
    c = server_action("remove", cmd_chunkserver_remove, help="forget a stopped server",
                      description="Forget a stopped chunk server: its entry in 'dfs status' "
                                  "and its replicas in the chunk table. Refused while it is "
                                  "alive, and while it holds the only copy of a chunk (unless "
                                  "--force).")
    c.add_argument("--force", action="store_true",
                   help="remove it even though chunks whose only copy it holds are lost")

    p = sub.add_parser("quota", help="directory quotas",
                       description="Byte and inode limits on directories. PATH is a path "
                                   "inside dfs (e.g. /volumes/pvc-1) or a path on a dfs "
                                   "mount of this host.")
    qsub = p.add_subparsers(dest="quota_command", required=True, metavar="ACTION")
    q = qsub.add_parser("set", help="set a directory's limits (0 = unlimited)")
    add_cluster_args(q)
    q.add_argument("path", type=_dfs_path, help=DFS_PATH_HELP)
    q.add_argument("--bytes", type=_size, required=True, help="byte limit, e.g. 10G")
    q.add_argument("--inodes", type=int, default=0, help="inode limit (default unlimited)")
    q.set_defaults(func=cmd_quota_set)
    _report_command(qsub, "get", cmd_quota_get, "path",
                    help="show a directory's limits and usage")
    _report_command(qsub, "ls", cmd_quota_ls, help="list every quota with its usage")

    p = sub.add_parser("replicas", help="replication factor of a directory or file",
                       description="How many chunk servers hold each chunk. PATH is a path "
                                   "inside dfs (e.g. /volumes/pvc-1) or on a dfs mount of "
                                   "this host. On a "
                                   "directory the factor applies to files and directories "
                                   "created in it afterwards; on a file it applies at once "
                                   "(raising it makes the metaserver copy the file's chunks; "
                                   "lowering it deletes the extra copies, from the servers "
                                   "with the fullest disks, within seconds).")
    rsub = p.add_subparsers(dest="replicas_command", required=True, metavar="ACTION")
    r = rsub.add_parser("set", help="set the factor of a directory or file (1..16)")
    add_cluster_args(r)
    r.add_argument("path", type=_dfs_path, help=DFS_PATH_HELP)
    r.add_argument("replicas", type=int, metavar="N", help="copies of each chunk, 1..16")
    r.set_defaults(func=cmd_replicas_set)
    r = rsub.add_parser("get", help="show the factor of a directory or file")
    add_cluster_args(r)
    r.add_argument("path", type=_dfs_path, help=DFS_PATH_HELP)
    r.add_argument("--json", action="store_true",
                   help='print {"replicas": stored factor (0 = none), "effective": N}')
    r.set_defaults(func=cmd_replicas_get)

    p = sub.add_parser("snapshot", help="copy a folder at one point in time, sharing its data",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Copy folder SOURCE with everything in it as TARGET (paths\n"
                                   "inside dfs; TARGET's parent must exist, TARGET must not),\n"
                                   "as it is at one moment: writes into SOURCE wait for that\n"
                                   "moment to pass. The copy shares every file's data with\n"
                                   "SOURCE until either side changes it (copy-on-write), so it\n"
                                   "takes no space at first and is made in about the time a\n"
                                   "listing of the tree takes. Owners, modes, times, xattrs,\n"
                                   "symlinks and hard links inside the tree are kept; quotas\n"
                                   "are not, and the copy counts against the quotas above\n"
                                   "TARGET. Remove a snapshot with rm -r on a mount.",
                       epilog="example: dfs snapshot --data-dir /var/lib/dfs /db /snapshots/db-monday")
    add_cluster_args(p)
    p.add_argument("source", type=_dfs_path,
                   help="the folder to copy: a path inside dfs, or on a dfs mount here")
    p.add_argument("target", type=_dfs_path,
                   help="the copy to make: a path inside dfs, or on a dfs mount here")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("fence", help="hand a folder to one new mount, fencing out the others",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Move the attachment epoch of folder PATH (a path inside\n"
                                   "dfs, e.g. /volumes/pvc-1) on and print the new epoch. Every\n"
                                   "mount made with --epoch and an older epoch is refused each\n"
                                   "change from then on (EROFS), and its writes on their way\n"
                                   "are refused by the chunk servers, so it cannot overwrite\n"
                                   "what the mount made with the new epoch writes. Reading goes\n"
                                   "on. Mounts made without --epoch are not affected. The CSI\n"
                                   "plugin does this itself for single-node volumes; use it by\n"
                                   "hand to move a database from one host to another.",
                       epilog="example: dfs fence --data-dir /var/lib/dfs /db\n"
                              "         dfs mount --data-dir /var/lib/dfs --subdir /db "
                              "--epoch 2 /mnt/db")
    add_cluster_args(p)
    p.add_argument("path", type=_dfs_path,
                   help="the folder: a path inside dfs, or on a dfs mount here")
    p.add_argument("--quiet", action="store_true", help="print the epoch alone")
    p.set_defaults(func=cmd_fence)

    p = sub.add_parser("backup", help="backups of the metadata: take, list, copy off the host",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Every file hangs on the metaserver's database, so the\n"
                                   "metaserver backs it up while it serves: every\n"
                                   "--backup-interval (an hour by default) and when asked,\n"
                                   "into its --backup-dir, keeping the newest --backup-keep.\n"
                                   "A backup is a consistent copy (every change acknowledged\n"
                                   "before it began). Copy them off the metaserver's host with\n"
                                   "'get'; bring one back with dfs-metaserver-restore.",
                       epilog="example: dfs backup now --data-dir /var/lib/dfs\n"
                              "         dfs backup get --meta 10.0.0.5:7000 latest /backup/")
    bsub = p.add_subparsers(dest="backup_command", required=True, metavar="ACTION")
    b = bsub.add_parser("now", help="take a backup now and print its name")
    add_cluster_args(b)
    b.set_defaults(func=cmd_backup_now)
    _report_command(bsub, "ls", cmd_backup_ls,
                    help="list the backups the metaserver keeps, oldest first")
    b = bsub.add_parser("get", help="copy a backup to a file here, checking its sha256",
                        description="Copy backup NAME ('latest' for the newest) from the "
                                    "metaserver to TARGET, a file or a folder to put it in "
                                    "under its own name, with TARGET.sha256 beside it. The "
                                    "file appears only once whole and checked.")
    add_cluster_args(b)
    b.add_argument("name", help="a name from 'dfs backup ls', or 'latest'")
    b.add_argument("target", help="file or folder to write it to")
    b.set_defaults(func=cmd_backup_get)

    p = sub.add_parser("trash", help="files removed lately: list, restore, purge",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="A metaserver started with --trash-hours H keeps each file\n"
                                   "that loses its last name (rm, or a rename over it) in\n"
                                   "/.trash for H hours before deleting it. Entries are named\n"
                                   "HOUR/NAME as 'ls' shows them. 'restore' moves one back to\n"
                                   "where it was removed from (or --to PATH), making missing\n"
                                   "folders on the way; it never replaces a file.",
                       epilog="example: dfs trash ls --data-dir /var/lib/dfs\n"
                              "         dfs trash restore --data-dir /var/lib/dfs "
                              "2026-11-27-10/1-57-report.txt")
    tsub = p.add_subparsers(dest="trash_command", required=True, metavar="ACTION")
    _report_command(tsub, "ls", cmd_trash_ls,
                    help="list what the trash holds, with where it was removed from")
    t = tsub.add_parser("restore", help="move entries back to where they were removed from")
    add_cluster_args(t)
    t.add_argument("entries", nargs="+", metavar="ENTRY", help="HOUR/NAME, as 'ls' shows it")
    t.add_argument("--to", metavar="PATH",
                   help="restore the one ENTRY to this path inside dfs instead")
    t.set_defaults(func=cmd_trash_restore)
    t = tsub.add_parser("purge", help="delete entries now, freeing their space")
    add_cluster_args(t)
    t.add_argument("entries", nargs="*", metavar="ENTRY", help="HOUR/NAME, as 'ls' shows it")
    t.add_argument("--all", action="store_true", help="empty the whole trash")
    t.set_defaults(func=cmd_trash_purge)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DfsError, ConfigError, OSError) as exc:
        print(f"dfs {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
