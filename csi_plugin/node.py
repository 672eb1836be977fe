"""The CSI Node service: stage with a FUSE mount, publish with a bind mount."""

import os
import threading

from dfs import logs

from . import capabilities as caps
from . import csi_pb2 as csi
from . import csi_pb2_grpc
from .errors import already_exists, grpc_method, invalid, not_found, out_of_range, precondition
from .ids import check_volume_id
from .mounts import Mounter, broken, exists, mounted_at
from .nodestate import NodeState, Target
from .volumes import PUBLISH_EPOCH, PUBLISH_READONLY, VOLUMES_DIR, Volume, VolumeStore

log = logs.get_logger("csi.node")

RPC = csi.NodeServiceCapability.RPC
CAPABILITIES = (RPC.STAGE_UNSTAGE_VOLUME, RPC.GET_VOLUME_STATS, RPC.EXPAND_VOLUME,
                RPC.VOLUME_CONDITION, RPC.SINGLE_NODE_MULTI_WRITER)
Unit = csi.VolumeUsage.Unit


def _required_path(request, field: str) -> str:
    path = getattr(request, field)
    if not path:
        raise invalid(f"{field} is required")
    if not os.path.isabs(path) or "\0" in path:
        raise invalid(f"{field} must be an absolute path")
    return os.path.normpath(path)


def _epoch_of(request) -> int:
    """The attachment epoch ControllerPublishVolume handed out (0: none)."""
    text = request.publish_context.get(PUBLISH_EPOCH, "")
    if not text:
        return 0
    if not text.isdigit() or int(text) < 1:
        raise invalid(f"publish_context {PUBLISH_EPOCH!r} must be a positive whole number, "
                      f"not {text[:32]!r}")
    return int(text)


def _target_for(request, cap: csi.VolumeCapability) -> Target:
    flags = [flag for flag in cap.mount.mount_flags if flag not in ("ro", "rw")]
    # ControllerPublishVolume's readonly reaches the node through the publish
    # context; kubelet's own readonly flag comes with the request.
    readonly = (request.readonly or caps.read_only(cap)
                or request.publish_context.get(PUBLISH_READONLY) == "true")
    return Target(readonly=readonly, mode=cap.access_mode.mode,
                  flags=(["ro"] if readonly else []) + sorted(set(flags)))


class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(self, node_id: str, store: VolumeStore, state: NodeState, mounter: Mounter,
                 max_volumes: int):
        self.node_id = node_id
        # Set once the node is in the metaserver's registry; until then the
        # plugin reports itself not ready, as the controller would not know it.
        self.registered = threading.Event()
        self.store = store
        self.state = state
        self.mounter = mounter
        self.max_volumes = max_volumes

    # --- mount upkeep -------------------------------------------------------
    def _mount_staging(self, volume_id: str, path: str, epoch: int) -> None:
        """Make sure the staging mount at `path` is live, repairing a broken one."""
        entry = mounted_at(path)
        if entry is not None and not broken(path):
            return
        if entry is not None:
            log.warning("repairing broken mount", volume=volume_id, path=path)
            self.mounter.unmount_volume(path, volume_id)
        settings = self.store.get(volume_id).parameters
        self.mounter.mount_volume(f"{VOLUMES_DIR}/{volume_id}", path, volume_id,
                                  settings.get("readCacheMiB"), epoch,
                                  xattrs=settings.get("xattrs") != "false")

    def _bind_target(self, staging: str, path: str, target: Target) -> None:
        if mounted_at(path) is not None and not broken(path):
            return
        # A broken bind mount is covered by the new one rather than removed
        # first, so the pod never sees the bare directory beneath (and never
        # writes into it); NodeUnpublishVolume peels off the whole stack.
        self.mounter.bind(staging, path, target.flags)

    def repair(self, volume_id: str) -> None:
        """Bring back every mount recorded for `volume_id` that is broken or gone."""
        state = self.state.load(volume_id)
        if not state.staging:
            return
        self._mount_staging(volume_id, state.staging, state.epoch)
        for path, target in state.targets.items():
            self._bind_target(state.staging, path, target)

    def register(self) -> None:
        self.store.register_node(self.node_id)
        self.registered.set()
        log.info("node registered", node=self.node_id)

    def repair_all(self) -> None:
        for volume_id in self.state.volume_ids():
            with self.store.lock(volume_id):
                try:
                    self.repair(volume_id)
                except Exception as exc:
                    log.error("cannot repair mounts", volume=volume_id, reason=str(exc))

    # --- RPCs ---------------------------------------------------------------
    @grpc_method(log)
    def NodeStageVolume(self, request, context):
        volume_id = check_volume_id(request.volume_id)
        staging = _required_path(request, "staging_target_path")
        caps.require_capability(request)
        epoch = _epoch_of(request)
        with self.store.lock(volume_id):
            self.store.get(volume_id)
            state = self.state.load(volume_id)
            if state.staging and state.staging != staging and mounted_at(state.staging):
                raise precondition(f"volume {volume_id} is already staged at {state.staging}")
            if state.staging == staging and state.epoch != epoch and mounted_at(staging):
                # Published to this node again under a new epoch: the mount made
                # under the old one may change nothing any more.
                log.warning("remounting under a new attachment epoch", volume=volume_id,
                            path=staging, old=state.epoch, epoch=epoch)
                for path in state.targets:
                    self.mounter.unbind(path)
                self.mounter.unmount_volume(staging, volume_id)
            self._mount_staging(volume_id, staging, epoch)
            for path, target in state.targets.items():
                self._bind_target(staging, path, target)
            state.staging, state.epoch = staging, epoch
            self.state.save(state)
        return csi.NodeStageVolumeResponse()

    @grpc_method(log)
    def NodeUnstageVolume(self, request, context):
        volume_id = check_volume_id(request.volume_id)
        staging = _required_path(request, "staging_target_path")
        with self.store.lock(volume_id):
            state = self.state.load(volume_id)
            if mounted_at(staging) is not None:
                self.mounter.unmount_volume(staging, volume_id)
            if state.staging == staging:
                state.staging = ""
                self.state.save(state)
        return csi.NodeUnstageVolumeResponse()

    @grpc_method(log)
    def NodePublishVolume(self, request, context):
        volume_id = check_volume_id(request.volume_id)
        target_path = _required_path(request, "target_path")
        cap = caps.require_capability(request)
        if not request.staging_target_path:
            raise precondition("staging_target_path is required: stage the volume first")
        staging = _required_path(request, "staging_target_path")
        wanted = _target_for(request, cap)
        with self.store.lock(volume_id):
            self.store.get(volume_id)
            state = self.state.load(volume_id)
            if mounted_at(staging) is None:
                raise precondition(f"volume {volume_id} is not staged at {staging}")
            held = state.targets.get(target_path)
            if held is not None and held != wanted:
                raise already_exists(f"volume {volume_id} is already published at "
                                     f"{target_path} with other options")
            others = [path for path in state.targets if path != target_path]
            if others and wanted.mode not in caps.MULTI_TARGET_MODES:
                raise precondition(f"volume {volume_id} is {caps.mode_name(wanted.mode)} and "
                                   f"already published at {others[0]}")
            self._mount_staging(volume_id, staging, state.epoch)
            self._bind_target(staging, target_path, wanted)
            state.staging = staging
            state.targets[target_path] = wanted
            self.state.save(state)
            log.info("volume published", volume=volume_id, target=target_path,
                     readonly=wanted.readonly)
        return csi.NodePublishVolumeResponse()

    @grpc_method(log)
    def NodeUnpublishVolume(self, request, context):
        volume_id = check_volume_id(request.volume_id)
        target_path = _required_path(request, "target_path")
        with self.store.lock(volume_id):
            self.mounter.unbind(target_path)
            self.mounter.remove_mountpoint(target_path)
            state = self.state.load(volume_id)
            if state.targets.pop(target_path, None) is not None:
                self.state.save(state)
                log.info("volume unpublished", volume=volume_id, target=target_path)
        return csi.NodeUnpublishVolumeResponse()

    def _volume_at(self, request) -> tuple[Volume, str]:
        """The volume and the path it must be mounted at, or NOT_FOUND."""
        volume_id = check_volume_id(request.volume_id)
        if not request.volume_path:
            raise invalid("volume_path is required")
        volume = self.store.get(volume_id)
        path = os.path.normpath(request.volume_path)
        if not os.path.isabs(path) or not exists(path) or mounted_at(path) is None:
            raise not_found(f"volume {volume_id} is not mounted at {request.volume_path}")
        return volume, path

    @grpc_method(log)
    def NodeGetVolumeStats(self, request, context):
        volume, path = self._volume_at(request)
        found = self.store.usage(volume)
        usage = [csi.VolumeUsage(unit=unit, total=total, used=used, available=available)
                 for unit, (total, used, available) in ((Unit.BYTES, found["bytes"]),
                                                        (Unit.INODES, found["inodes"]))]
        if broken(path):
            condition = csi.VolumeCondition(
                abnormal=True, message=f"{path}: transport endpoint is not connected (the "
                                       "dfs mount process is gone); restaging repairs it")
        else:
            condition = csi.VolumeCondition(abnormal=False, message="mounted")
        return csi.NodeGetVolumeStatsResponse(usage=usage, volume_condition=condition)

    @grpc_method(log)
    def NodeExpandVolume(self, request, context):
        volume, _ = self._volume_at(request)
        if request.HasField("volume_capability"):
            caps.check_capability(request.volume_capability)
        wanted = request.capacity_range.required_bytes
        if wanted > volume.capacity:
            raise out_of_range(f"volume {volume.volume_id} has {volume.capacity} bytes; "
                               "grow it with ControllerExpandVolume first")
        # The mount reports the quota as its size, so there is nothing to grow
        # on the node: this call only confirms the size the node sees.
        return csi.NodeExpandVolumeResponse(capacity_bytes=volume.capacity)

    @grpc_method(log)
    def NodeGetCapabilities(self, request, context):
        return csi.NodeGetCapabilitiesResponse(capabilities=[
            csi.NodeServiceCapability(rpc=RPC(type=kind)) for kind in CAPABILITIES])

    @grpc_method(log)
    def NodeGetInfo(self, request, context):
        return csi.NodeGetInfoResponse(node_id=self.node_id,
                                       max_volumes_per_node=self.max_volumes)
