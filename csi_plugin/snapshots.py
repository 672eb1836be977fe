"""Snapshots as the metaserver holds them: `/.dfs-csi/snapshots/<id>`.

A snapshot is a copy of its volume's directory made by the metaserver's
`snapshot` operation: the whole tree in one transaction, every file sharing
its chunks with the volume until either side writes to one (copy-on-write),
so taking it costs metadata only. The copy is independent of the volume from
then on: deleting either leaves the other whole.

The xattr `trusted.dfs.csi.snapshot` on the copy's root records the CSI name,
the source volume, the creation time and the size; it is written last, so a
directory without it is a creation that was cut short. Whether that copy was
cut from the volume a later call names is not known, so the next
CreateSnapshot discards it and cuts the snapshot again; no CO was ever told
of it.
"""

import errno
import json
from dataclasses import dataclass

from dfs.errors import DfsError
from dfs.records import Attr

from . import trash
from .errors import from_dfs
from .metaclient import MetaClient
from .volumes import Volume

SNAPSHOTS_DIR = "/.dfs-csi/snapshots"
RECORD_XATTR = "trusted.dfs.csi.snapshot"


@dataclass
class Snapshot:
    snapshot_id: str
    ino: int
    name: str
    source_volume_id: str
    # Nanoseconds since the epoch at which the copy was cut.
    created: int
    # The bytes the copy holds (logical file sizes, as quotas count them):
    # the source volume's usage at that moment.
    size: int


class SnapshotStore:
    def __init__(self, meta: MetaClient):
        self.meta = meta
        self._snapshots_ino: int | None = None

    def snapshots_ino(self) -> int:
        if self._snapshots_ino is None:
            self._snapshots_ino = self.meta.ensure_path(SNAPSHOTS_DIR, 0o700).ino
        return self._snapshots_ino

    def load(self, snapshot_id: str) -> Snapshot | None:
        """The snapshot, or None if it does not exist (or was never finished)."""
        try:
            attr = self.meta.lookup(self.snapshots_ino(), snapshot_id)
            raw = self.meta.getxattr(attr.ino, RECORD_XATTR) if attr else None
        except DfsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise from_dfs(exc, f"reading snapshot {snapshot_id}") from None
        if not raw:
            return None
        record = json.loads(raw)
        return Snapshot(snapshot_id, attr.ino, record["name"], record["source"],
                        record["created"], record["size"])

    def list_ids(self) -> list[str]:
        try:
            return sorted(name for name, _ in self.meta.entries(self.snapshots_ino()))
        except DfsError as exc:
            raise from_dfs(exc, "listing snapshots") from None

    def create(self, snapshot_id: str, name: str, source: Volume) -> Snapshot:
        """Cut the snapshot from `source`, in place of whatever a creation cut
        short left under its id."""
        try:
            parent = self.snapshots_ino()
            trash.discard(self.meta, parent, snapshot_id)
            reply = self.meta.call("snapshot", ino=source.ino, parent=parent,
                                   name=snapshot_id.encode())
            attr, size = Attr.from_wire(reply), reply["bytes"]
            snapshot = Snapshot(snapshot_id, attr.ino, name, source.volume_id, attr.ctime, size)
            record = {"name": name, "source": source.volume_id, "created": attr.ctime,
                      "size": size}
            self.meta.setxattr(attr.ino, RECORD_XATTR, json.dumps(record).encode())
        except DfsError as exc:
            raise from_dfs(exc, f"taking snapshot {snapshot_id} of volume "
                                f"{source.volume_id}") from None
        return snapshot

    def delete(self, snapshot_id: str) -> bool:
        """Remove the snapshot; False if there was nothing to remove. Volumes
        restored from it keep their own copy of every file."""
        try:
            return trash.discard(self.meta, self.snapshots_ino(), snapshot_id)
        except DfsError as exc:
            raise from_dfs(exc, f"deleting snapshot {snapshot_id}") from None
