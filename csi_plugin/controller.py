"""The CSI Controller service: volumes as quota directories on the metaserver,
snapshots as copies of them."""

from google.protobuf.timestamp_pb2 import Timestamp

from dfs import logs
from dfs.errors import DfsError

from . import capabilities as caps
from . import csi_pb2 as csi
from . import csi_pb2_grpc
from . import parameters as params
from . import sources
from .errors import (CsiError, already_exists, from_dfs, grpc_method, invalid, not_found,
                     precondition)
from .ids import check_id, check_node_id, check_snapshot_id, check_volume_id, id_for
from .locks import SNAPSHOT_KEY
from .paging import page
from .snapshots import Snapshot, SnapshotStore
from .sources import Source
from .volumes import PUBLISH_EPOCH, PUBLISH_READONLY, Publication, Volume, VolumeStore

log = logs.get_logger("csi.controller")

RPC = csi.ControllerServiceCapability.RPC
CAPABILITIES = (RPC.CREATE_DELETE_VOLUME, RPC.PUBLISH_UNPUBLISH_VOLUME, RPC.LIST_VOLUMES,
                RPC.GET_CAPACITY, RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS,
                RPC.CLONE_VOLUME, RPC.PUBLISH_READONLY, RPC.EXPAND_VOLUME,
                RPC.LIST_VOLUMES_PUBLISHED_NODES, RPC.GET_VOLUME, RPC.SINGLE_NODE_MULTI_WRITER)


def volume_message(volume: Volume) -> csi.Volume:
    context = {"path": volume.path}
    context.update({key: str(value) for key, value in volume.parameters.items()})
    message = csi.Volume(capacity_bytes=volume.capacity, volume_id=volume.volume_id,
                         volume_context=context)
    if volume.source is not None:
        message.content_source.CopyFrom(volume.source.message())
    return message


def snapshot_message(snapshot: Snapshot) -> csi.Snapshot:
    created = Timestamp()
    created.FromNanoseconds(snapshot.created)
    # The copy is whole once the metaserver answers: nothing is left to upload.
    return csi.Snapshot(size_bytes=snapshot.size, snapshot_id=snapshot.snapshot_id,
                        source_volume_id=snapshot.source_volume_id, creation_time=created,
                        ready_to_use=True)


def check_publish_allowed(volume: Volume, node_id: str, wanted: Publication) -> None:
    """Raise unless `node_id` may publish `volume` as `wanted` next to the others."""
    held = volume.published.get(node_id)
    if held is not None and not held.same_access(wanted):
        raise already_exists(
            f"volume {volume.volume_id} is already published to node {node_id} as "
            f"{caps.mode_name(held.mode)} readonly={held.readonly}")
    others = {node: p for node, p in volume.published.items() if node != node_id}
    if not others:
        return
    if wanted.mode in caps.SINGLE_NODE_MODES or any(
            p.mode in caps.SINGLE_NODE_MODES for p in others.values()):
        raise precondition(f"volume {volume.volume_id} is single-node and already published "
                           f"to node {sorted(others)[0]}; unpublish it there first")
    writers = [node for node, p in others.items()
               if p.mode == caps.Mode.MULTI_NODE_SINGLE_WRITER and not p.readonly]
    if wanted.mode == caps.Mode.MULTI_NODE_SINGLE_WRITER and not wanted.readonly and writers:
        raise precondition(f"volume {volume.volume_id} already has its one writer on node "
                           f"{writers[0]}")


def _lock_key(source: Source) -> str:
    return SNAPSHOT_KEY + source.id if source.kind == sources.SNAPSHOT else source.id


def _made_as(source: Source | None) -> str:
    return f"a copy of {source}" if source else "an empty volume"


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(self, store: VolumeStore, snapshots: SnapshotStore):
        self.store = store
        self.snapshots = snapshots

    @grpc_method(log)
    def CreateVolume(self, request, context):
        volume_id = id_for(request.name)
        caps.check_capabilities(request.volume_capabilities)
        settings = params.parse(request.parameters)
        source = sources.requested(request)
        wanted_range = request.capacity_range if request.HasField("capacity_range") else None
        # The source stays locked while it is copied: a DeleteVolume or
        # DeleteSnapshot of it waits instead of emptying it under the copy.
        keys = [volume_id] + ([_lock_key(source)] if source else [])
        with self.store.lock.holding(*keys):
            volume = self.store.load(volume_id)
            if volume is None:
                if source is not None:
                    self._locate(source)
                size = caps.size_for_create(wanted_range, source.size if source else 0)
                volume = self.store.create(volume_id, request.name, settings, size,
                                           settings.get("inodeLimit", 0), source)
                log.info("volume created", volume=volume_id, name=request.name,
                         capacity=size, ino=volume.ino, source=str(source or "-"))
            elif volume.name != request.name:
                raise already_exists(f"volume id {volume_id} already belongs to another name")
            elif volume.parameters != settings:
                raise already_exists(f"volume {request.name!r} exists with parameters "
                                     f"{volume.parameters}")
            elif volume.source != source:
                raise already_exists(f"volume {request.name!r} exists as "
                                     f"{_made_as(volume.source)}, not as {_made_as(source)}")
            elif not caps.size_fits(volume.capacity, wanted_range):
                raise already_exists(f"volume {request.name!r} exists with capacity "
                                     f"{volume.capacity} bytes, outside the requested range")
            # Also on a compatible re-create: a creation cut short after the
            # volume record was written has not set the factor yet.
            if "replicas" in settings:
                self._set_replicas(volume, settings["replicas"])
        return csi.CreateVolumeResponse(volume=volume_message(volume))

    def _locate(self, source: Source) -> None:
        """Find the directory `source` names and the least capacity a copy of
        it needs: what a snapshot holds, what a volume may hold (Kubernetes
        asks a clone to be at least as large as its source)."""
        snapshot = source.kind == sources.SNAPSHOT
        found = self.snapshots.load(source.id) if snapshot else self.store.load(source.id)
        if found is None:
            raise not_found(f"the volume's content source, {source}, does not exist")
        source.ino = found.ino
        source.size = found.size if snapshot else found.capacity

    def _set_replicas(self, volume: Volume, replicas: int) -> None:
        try:
            self.store.meta.call("replicas_set", ino=volume.ino, replicas=replicas)
        except DfsError as exc:
            raise from_dfs(exc, f"setting the replication factor of volume "
                                f"{volume.volume_id}") from None

    @grpc_method(log)
    def DeleteVolume(self, request, context):
        volume_id = check_volume_id(request.volume_id)
        with self.store.lock(volume_id):
            volume = self.store.load(volume_id)
            if volume is not None and volume.published:
                raise precondition(f"volume {volume_id} is still published to nodes "
                                   f"{sorted(volume.published)}")
            if self.store.delete(volume_id):
                log.info("volume deleted", volume=volume_id)
        return csi.DeleteVolumeResponse()

    @grpc_method(log)
    def ControllerPublishVolume(self, request, context):
        volume_id = check_volume_id(request.volume_id)
        node_id = check_node_id(request.node_id)
        cap = caps.require_capability(request)
        wanted = Publication(readonly=request.readonly, mode=cap.access_mode.mode)
        with self.store.lock(volume_id):
            volume = self.store.get(volume_id)
            if not self.store.node_known(node_id):
                raise not_found(f"node {node_id} is not known: no dfs-csi node plugin "
                                "has registered it")
            check_publish_allowed(volume, node_id, wanted)
            held = volume.published.get(node_id)
            if held is None:
                if wanted.mode in caps.SOLE_WRITER_MODES and not wanted.readonly:
                    # Whatever mount the volume had before may change nothing now.
                    wanted.epoch = self.store.fence(volume)
                self.store.set_published(volume, {**volume.published, node_id: wanted})
                log.info("volume published", volume=volume_id, node=node_id,
                         mode=caps.mode_name(wanted.mode), readonly=wanted.readonly,
                         epoch=wanted.epoch)
                held = wanted
        publish_context = {PUBLISH_READONLY: "true" if held.readonly else "false"}
        if held.epoch:
            publish_context[PUBLISH_EPOCH] = str(held.epoch)
        return csi.ControllerPublishVolumeResponse(publish_context=publish_context)

    @grpc_method(log)
    def ControllerUnpublishVolume(self, request, context):
        volume_id = check_volume_id(request.volume_id)
        node_id = check_node_id(request.node_id) if request.node_id else ""
        with self.store.lock(volume_id):
            volume = self.store.load(volume_id)
            if volume is None:
                return csi.ControllerUnpublishVolumeResponse()
            remaining = {node: p for node, p in volume.published.items()
                         if node_id and node != node_id}
            if remaining != volume.published:
                # The node may be cut off and still writing: fence it out
                # before the volume counts as free for another node.
                if any(p.epoch for node, p in volume.published.items() if node not in remaining):
                    self.store.fence(volume)
                self.store.set_published(volume, remaining)
                log.info("volume unpublished", volume=volume_id, node=node_id or "all")
        return csi.ControllerUnpublishVolumeResponse()

    @grpc_method(log)
    def ValidateVolumeCapabilities(self, request, context):
        volume_id = check_volume_id(request.volume_id)
        if not request.volume_capabilities:
            raise invalid("volume_capabilities is required")
        volume = self.store.get(volume_id)
        try:
            caps.check_capabilities(request.volume_capabilities)
            if request.parameters and params.parse(request.parameters) != volume.parameters:
                raise invalid("parameters differ from those the volume was created with")
            expected = dict(volume_message(volume).volume_context)
            if request.volume_context and dict(request.volume_context) != expected:
                raise invalid("volume_context differs from the one CreateVolume returned")
        except CsiError as exc:
            return csi.ValidateVolumeCapabilitiesResponse(message=exc.message)
        confirmed = csi.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters)
        return csi.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    @grpc_method(log)
    def ListVolumes(self, request, context):
        volumes, next_token = page(request, self.store.list_ids(), self.store.load)
        entries = [csi.ListVolumesResponse.Entry(
            volume=volume_message(volume),
            status=csi.ListVolumesResponse.VolumeStatus(
                published_node_ids=sorted(volume.published))) for volume in volumes]
        return csi.ListVolumesResponse(entries=entries, next_token=next_token)

    @grpc_method(log)
    def ControllerGetVolume(self, request, context):
        volume = self.store.get(check_volume_id(request.volume_id))
        return csi.ControllerGetVolumeResponse(
            volume=volume_message(volume),
            status=csi.ControllerGetVolumeResponse.VolumeStatus(
                published_node_ids=sorted(volume.published)))

    @grpc_method(log)
    def GetCapacity(self, request, context):
        try:
            if request.volume_capabilities:
                caps.check_capabilities(request.volume_capabilities)
            params.parse(request.parameters)
        except CsiError:
            # No volume with these capabilities can be made: none fits.
            return csi.GetCapacityResponse(available_capacity=0)
        return csi.GetCapacityResponse(available_capacity=self.store.available())

    @grpc_method(log)
    def ControllerGetCapabilities(self, request, context):
        return csi.ControllerGetCapabilitiesResponse(capabilities=[
            csi.ControllerServiceCapability(rpc=RPC(type=kind)) for kind in CAPABILITIES])

    @grpc_method(log)
    def ControllerExpandVolume(self, request, context):
        volume_id = check_volume_id(request.volume_id)
        if not request.HasField("capacity_range"):
            raise invalid("capacity_range is required")
        if request.HasField("volume_capability"):
            caps.check_capability(request.volume_capability)
        with self.store.lock(volume_id):
            volume = self.store.get(volume_id)
            size = caps.size_for_expand(volume.capacity, request.capacity_range)
            if size != volume.capacity:
                old = volume.capacity
                self.store.resize(volume, size)
                log.info("volume expanded", volume=volume_id, old=old, capacity=size)
        # The quota is what statfs reports on every mount, so nodes see the
        # new size at once: there is nothing for NodeExpandVolume to do.
        return csi.ControllerExpandVolumeResponse(capacity_bytes=size,
                                                  node_expansion_required=False)

    @grpc_method(log)
    def CreateSnapshot(self, request, context):
        snapshot_id = id_for(request.name)
        source_id = check_id(request.source_volume_id, "source_volume_id")
        params.check_snapshot_parameters(request.parameters)
        # The source stays locked while it is copied, so a DeleteVolume waits
        # instead of emptying it under the copy.
        with self.store.lock.holding(SNAPSHOT_KEY + snapshot_id, source_id):
            snapshot = self.snapshots.load(snapshot_id)
            if snapshot is None:
                snapshot = self.snapshots.create(snapshot_id, request.name,
                                                 self.store.get(source_id))
                log.info("snapshot taken", snapshot=snapshot_id, name=request.name,
                         volume=source_id, size=snapshot.size, ino=snapshot.ino)
            elif snapshot.name != request.name:
                raise already_exists(f"snapshot id {snapshot_id} already belongs to another "
                                     "name")
            elif snapshot.source_volume_id != source_id:
                raise already_exists(f"snapshot {request.name!r} exists, taken of volume "
                                     f"{snapshot.source_volume_id}")
        return csi.CreateSnapshotResponse(snapshot=snapshot_message(snapshot))

    @grpc_method(log)
    def DeleteSnapshot(self, request, context):
        snapshot_id = check_snapshot_id(request.snapshot_id)
        with self.store.lock(SNAPSHOT_KEY + snapshot_id):
            if self.snapshots.delete(snapshot_id):
                log.info("snapshot deleted", snapshot=snapshot_id)
        return csi.DeleteSnapshotResponse()

    @grpc_method(log)
    def ListSnapshots(self, request, context):
        source_id = (check_id(request.source_volume_id, "source_volume_id")
                     if request.source_volume_id else "")
        if request.snapshot_id:
            ids = [check_snapshot_id(request.snapshot_id)]
        else:
            ids = self.snapshots.list_ids()

        def load(snapshot_id: str) -> Snapshot | None:
            snapshot = self.snapshots.load(snapshot_id)
            if snapshot is None or source_id not in ("", snapshot.source_volume_id):
                return None
            return snapshot

        found, next_token = page(request, ids, load)
        return csi.ListSnapshotsResponse(
            entries=[csi.ListSnapshotsResponse.Entry(snapshot=snapshot_message(snapshot))
                     for snapshot in found],
            next_token=next_token)
