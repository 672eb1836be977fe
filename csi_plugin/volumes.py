"""Volumes as the metaserver holds them: `/volumes/<id>` with a quota.

The quota's byte limit is the volume's capacity, so expanding a volume is one
quota change that every mount sees at once. Everything else the controller
must remember lives on the directory itself as `trusted.` xattrs (out of reach
of unprivileged pods that mount the directory):

- `trusted.dfs.csi.volume`: the CSI name, StorageClass parameters and content
  source; written last when a volume is created, so a directory without it is
  a creation that was cut short. Nothing tells what such a directory was being
  copied from, so the next CreateVolume discards it and starts again.
- `trusted.dfs.csi.published`: node id -> how the volume is published there,
  with the attachment epoch a sole writer was given (metaserver/fences.py).

A volume made from a content source is a copy of the source's directory (the
metaserver's `snapshot` operation: one transaction, every file's chunks
shared copy-on-write), given its own quota and record.

Nodes announce themselves as directories under `/.dfs-csi/nodes/` so that
ControllerPublishVolume can tell an unknown node from a known one.
DeleteVolume removes the tree through the trash (trash.py).
"""

import errno
import json
import os
import time
from dataclasses import dataclass, field

from dfs.errors import DfsError
from dfs.records import Attr

from . import trash
from .errors import from_dfs, not_found
from .locks import Locks
from .metaclient import ROOT_INO, MetaClient
from .sources import Source

VOLUMES_DIR = "/volumes"
NODES_DIR = "/.dfs-csi/nodes"
RECORD_XATTR = "trusted.dfs.csi.volume"
PUBLISHED_XATTR = "trusted.dfs.csi.published"
# Pods run as any uid; the volume's root is theirs to fill.
VOLUME_MODE = 0o777
# The publish-context keys that tell the node a volume was attached read-only,
# and the attachment epoch it is to mount the volume under.
PUBLISH_READONLY = "readonly"
PUBLISH_EPOCH = "epoch"


@dataclass
class Publication:
    readonly: bool
    mode: int
    # The attachment epoch the node mounts under (0: the node is not fenced).
    epoch: int = 0

    def to_wire(self) -> dict:
        return {"readonly": self.readonly, "mode": self.mode, "epoch": self.epoch}

    @classmethod
    def from_wire(cls, wire: dict) -> "Publication":
        return cls(bool(wire["readonly"]), int(wire["mode"]), int(wire.get("epoch", 0)))

    def same_access(self, other: "Publication") -> bool:
        return (self.readonly, self.mode) == (other.readonly, other.mode)


@dataclass
class Volume:
    volume_id: str
    ino: int
    name: str
    parameters: dict
    capacity: int
    published: dict[str, Publication] = field(default_factory=dict)
    source: Source | None = None

    @property
    def path(self) -> str:
        return f"{VOLUMES_DIR}/{self.volume_id}"


class VolumeStore:
    def __init__(self, meta: MetaClient):
        self.meta = meta
        self.lock = Locks()
        self._volumes_ino: int | None = None

    def volumes_ino(self) -> int:
        if self._volumes_ino is None:
            self._volumes_ino = self.meta.ensure_path(VOLUMES_DIR).ino
        return self._volumes_ino

    # --- reading ----------------------------------------------------------
    def _record(self, ino: int) -> dict | None:
        raw = self.meta.getxattr(ino, RECORD_XATTR)
        return json.loads(raw) if raw else None

    def _published(self, ino: int) -> dict[str, Publication]:
        raw = self.meta.getxattr(ino, PUBLISHED_XATTR)
        if not raw:
            return {}
        return {node: Publication.from_wire(p) for node, p in json.loads(raw).items()}

    def load(self, volume_id: str, ino: int | None = None) -> Volume | None:
        """The volume, or None if it does not exist (or was never finished)."""
        try:
            if ino is None:
                attr = self.meta.lookup(self.volumes_ino(), volume_id)
                if attr is None:
                    return None
                ino = attr.ino
            record = self._record(ino)
            if record is None:
                return None
            quota = self.meta.quota(ino)
            return Volume(volume_id, ino, record["name"], record.get("parameters", {}),
                          quota.bytes_limit, self._published(ino),
                          Source.from_wire(record.get("source")))
        except DfsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise from_dfs(exc, f"reading volume {volume_id}") from None

    def get(self, volume_id: str) -> Volume:
        volume = self.load(volume_id)
        if volume is None:
            raise not_found(f"volume {volume_id} does not exist")
        return volume

    def list_ids(self) -> list[str]:
        try:
            return sorted(name for name, _ in self.meta.entries(self.volumes_ino()))
        except DfsError as exc:
            raise from_dfs(exc, "listing volumes") from None

    # --- changing ---------------------------------------------------------
    def create(self, volume_id: str, name: str, parameters: dict, capacity: int,
               inodes: int, source: Source | None = None) -> Volume:
        """Make the volume, empty or as a copy of `source.ino`, in place of
        whatever a creation cut short left under its id."""
        try:
            parent = self.volumes_ino()
            trash.discard(self.meta, parent, volume_id)
            if source is None:
                attr = self.meta.ensure_dir(parent, volume_id, VOLUME_MODE)
            else:
                attr = Attr.from_wire(self.meta.call("snapshot", ino=source.ino, parent=parent,
                                                     name=volume_id.encode()))
            # The quota counts what the copy already holds.
            self.meta.set_quota(attr.ino, capacity, inodes)
            record = {"name": name, "parameters": parameters, "created": time.time()}
            if source is not None:
                record["source"] = source.to_wire()
            self.meta.setxattr(attr.ino, RECORD_XATTR, json.dumps(record).encode())
        except DfsError as exc:
            copied = f" from {source}" if source else ""
            raise from_dfs(exc, f"creating volume {volume_id}{copied}") from None
        return Volume(volume_id, attr.ino, name, parameters, capacity, source=source)

    def resize(self, volume: Volume, capacity: int) -> None:
        try:
            inodes = self.meta.quota(volume.ino).inodes_limit
            self.meta.set_quota(volume.ino, capacity, inodes)
        except DfsError as exc:
            raise from_dfs(exc, f"resizing volume {volume.volume_id}") from None
        volume.capacity = capacity

    def fence(self, volume: Volume) -> int:
        """Move the volume's attachment epoch on: mounts made under an older
        one may change nothing from now on. Returns the new epoch."""
        try:
            return self.meta.call("fence", ino=volume.ino, token=os.urandom(16))["epoch"]
        except DfsError as exc:
            raise from_dfs(exc, f"fencing volume {volume.volume_id}") from None

    def set_published(self, volume: Volume, published: dict[str, Publication]) -> None:
        wire = {node: p.to_wire() for node, p in sorted(published.items())}
        try:
            self.meta.setxattr(volume.ino, PUBLISHED_XATTR, json.dumps(wire).encode())
        except DfsError as exc:
            raise from_dfs(exc, f"recording where volume {volume.volume_id} is "
                                "published") from None
        volume.published = published

    def delete(self, volume_id: str) -> bool:
        """Remove the volume and its data; False if there was nothing to remove.
        Snapshots and clones of it keep their own copy of every file."""
        try:
            return trash.discard(self.meta, self.volumes_ino(), volume_id)
        except DfsError as exc:
            raise from_dfs(exc, f"deleting volume {volume_id}") from None

    # --- nodes --------------------------------------------------------------
    def register_node(self, node_id: str) -> None:
        try:
            nodes = self.meta.ensure_path(NODES_DIR, 0o700)
            self.meta.ensure_dir(nodes.ino, node_id, 0o700)
        except DfsError as exc:
            raise from_dfs(exc, f"registering node {node_id}") from None

    def node_known(self, node_id: str) -> bool:
        try:
            nodes = self.meta.ensure_path(NODES_DIR, 0o700)
            return self.meta.lookup(nodes.ino, node_id) is not None
        except DfsError as exc:
            raise from_dfs(exc, f"looking up node {node_id}") from None

    def usage(self, volume: Volume) -> dict:
        """Bytes and inodes (total, used, available) of `volume`: its quota's
        limits and usage, the cluster's free space where it sets no limit."""
        try:
            quota = self.meta.quota(volume.ino)
            space = self.meta.call("statfs", ino=volume.ino)
        except DfsError as exc:
            raise from_dfs(exc, f"reading usage of volume {volume.volume_id}") from None
        bsize = space["bsize"]
        byte_total = quota.bytes_limit or space["blocks"] * bsize
        inode_total = quota.inodes_limit or space["files"]
        return {
            "bytes": (byte_total, quota.bytes_used,
                      max(0, byte_total - quota.bytes_used) if quota.bytes_limit
                      else space["bavail"] * bsize),
            "inodes": (inode_total, quota.inodes_used,
                       max(0, inode_total - quota.inodes_used) if quota.inodes_limit
                       else space["ffree"]),
        }

    def available(self) -> int:
        """Bytes free in the cluster, as statfs on the root reports them."""
        try:
            reply = self.meta.call("statfs", ino=ROOT_INO)
        except DfsError as exc:
            raise from_dfs(exc, "reading cluster capacity") from None
        return reply["bavail"] * reply["bsize"]
