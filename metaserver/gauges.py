"""What the metaserver reports to Prometheus (`--metrics-listen`), besides the
requests the RPC layer counts: the size of the namespace, sessions, chunk
servers and capacity, replication health, group commits, backups,
metaloggers and the usage of every quota (so a volume filling up can raise an alert).

Everything is read when scraped, from memory or from LMDB's own counts; the
chunk health figures are those of the last re-replication round (every
second), so no scrape walks the chunk table.
"""

import time

from dfs.metrics import Registry, process_gauges

from .quotas import path_of
from .service import MetaService


def _entries(service: MetaService, table: str) -> int:
    return service.ctx.store.read(lambda tx: tx.txn.stat(tx.db[table])["entries"])


def _servers(service: MetaService) -> dict:
    registry = service.ctx.registry
    alive = sum(1 for s in registry.servers.values() if registry.alive(s.csid))
    draining = sum(1 for s in registry.servers.values() if s.draining)
    return {("alive",): alive, ("dead",): len(registry.servers) - alive,
            ("draining",): draining}


def _capacity(service: MetaService, field: str) -> int:
    return sum(getattr(s, field) for s in service.ctx.registry.live())


def _backup_age(service: MetaService) -> float | None:
    backups = service.backups.list()
    return time.time() - backups[-1].at if backups else None


def _quotas(service: MetaService, kind: str) -> dict:
    def read(tx):
        return {(path_of(tx, ino),): getattr(quota, kind) for ino, quota in tx.all_quotas()}
    return service.ctx.store.read(read)


def _metaloggers(service: MetaService, field: str) -> dict:
    return {(logger["name"],): logger[field] for logger in service.changelog.status()}


def registry_for(service: MetaService) -> Registry:
    metrics = Registry()
    process_gauges(metrics)
    ctx, cluster = service.ctx, service.cluster
    metrics.gauge("dfs_meta_inodes", "Files, directories and other inodes.",
                  lambda: _entries(service, "inodes"))
    metrics.gauge("dfs_meta_chunks", "Chunks in the chunk table.",
                  lambda: _entries(service, "chunks"))
    metrics.gauge("dfs_meta_database_bytes", "Size of the LMDB database in use.",
                  service.ctx.store.size)
    metrics.counted("dfs_meta_commits_total", "Group commits (LMDB write transactions, one "
                    "sync each).", lambda: ctx.store.batches)
    metrics.gauge("dfs_meta_sessions", "Client sessions (mounts, CSI, the dfs command).",
                  lambda: len(ctx.sessions.deadlines))
    metrics.gauge("dfs_meta_open_orphans", "Unlinked files kept because they are still open.",
                  lambda: len(ctx.opens.orphans))
    metrics.gauge("dfs_meta_chunkservers", "Chunk servers known, by state (alive and dead "
                  "add up to all; draining: being emptied to leave, alive or not).",
                  lambda: _servers(service), ("state",))
    metrics.gauge("dfs_meta_capacity_bytes", "Capacity of the live chunk servers' disks.",
                  lambda: _capacity(service, "capacity"))
    metrics.gauge("dfs_meta_used_bytes", "Space used on the live chunk servers' disks.",
                  lambda: _capacity(service, "used"))
    metrics.gauge("dfs_meta_under_replicated_chunks", "Chunks with fewer live replicas than "
                  "their replication factor.", lambda: cluster.under_replicated)
    metrics.gauge("dfs_meta_misplaced_chunks", "Chunks with their copies in fewer zones "
                  "than their factor and the live zones allow (being copied to another).",
                  lambda: cluster.misplaced)
    metrics.gauge("dfs_meta_unavailable_chunks", "Chunks with no live replica: their data "
                  "cannot be read until a server holding one returns.",
                  lambda: cluster.unavailable)
    metrics.gauge("dfs_meta_spare_chunks", "Empty chunks made ahead for new files to take.",
                  service.pool.spares)
    metrics.counted("dfs_meta_spare_chunks_taken_total", "New chunks that were spares made "
                    "ahead (the others were made while their writer waited).",
                    lambda: service.pool.taken)
    metrics.counted("dfs_meta_spare_chunks_dropped_total", "Spare chunks given up because a "
                    "server of theirs died or came back without them (their replicas "
                    "are deleted).", lambda: service.pool.dropped)
    metrics.gauge("dfs_meta_replications_in_progress", "Copies being made to restore "
                  "replication factors.", lambda: len(cluster.copies))
    metrics.counted("dfs_meta_bad_replicas_total", "Replicas reported failing their "
                    "checksums since the start.", lambda: cluster.bad_total)
    metrics.gauge("dfs_meta_backup_age_seconds", "Time since the newest backup of the "
                  "metadata was taken (absent if there is none).", lambda: _backup_age(service))
    metrics.gauge("dfs_meta_backup_failing", "1 while the last backup of the metadata "
                  "failed.", lambda: int(service.backups.last_error is not None))
    metrics.gauge("dfs_meta_metalogger_behind_commits", "Commits each metalogger has yet "
                  "to apply, by name.", lambda: _metaloggers(service, "behind"), ("name",))
    metrics.gauge("dfs_meta_metalogger_seen_seconds", "Time since each metalogger last asked "
                  "for commits, by name (it asks every few seconds).",
                  lambda: _metaloggers(service, "seen"), ("name",))
    leases = ctx.dirleases
    metrics.gauge("dfs_meta_dir_leases", "Folder leases held by mounts (dirleases.py).",
                  leases.count)
    metrics.counted("dfs_meta_dir_lease_recalls_total", "Folder leases recalled because "
                    "another session added a name.", lambda: leases.recalls)
    metrics.counted("dfs_meta_dir_leases_expired_total", "Recalled folder leases that ran "
                    "out instead of being released (a holder frozen or cut off; the change "
                    "waited for it).", lambda: leases.expired)
    for kind, what in (("bytes_used", "Bytes used"), ("bytes_limit", "Byte limit (0: none)"),
                       ("inodes_used", "Inodes used"), ("inodes_limit", "Inode limit (0: none)")):
        metrics.gauge(f"dfs_quota_{kind}", f"{what} under each quota directory, by path.",
                      lambda kind=kind: _quotas(service, kind), ("path",))
    return metrics
