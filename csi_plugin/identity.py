"""The CSI Identity service: who the plugin is and whether it can work."""

from google.protobuf import wrappers_pb2

from dfs import __version__ as dfs_version
from dfs import logs

from . import csi_pb2 as csi
from . import csi_pb2_grpc
from .errors import grpc_method
from .metaclient import MetaClient

log = logs.get_logger("csi.identity")

# The name StorageClasses and CSIDriver objects refer to; it must never change.
PLUGIN_NAME = "dfs.csi.dfs.io"

Service = csi.PluginCapability.Service
Expansion = csi.PluginCapability.VolumeExpansion


class IdentityService(csi_pb2_grpc.IdentityServicer):
    def __init__(self, meta: MetaClient, controller: bool, starting=lambda: False):
        self.meta = meta
        self.controller = controller
        self.starting = starting

    @grpc_method(log)
    def GetPluginInfo(self, request, context):
        return csi.GetPluginInfoResponse(name=PLUGIN_NAME, vendor_version=dfs_version)

    @grpc_method(log)
    def GetPluginCapabilities(self, request, context):
        # Every node reaches every volume through the metaserver, so there are
        # no accessibility constraints to declare.
        found = [csi.PluginCapability(volume_expansion=Expansion(type=Expansion.ONLINE))]
        if self.controller:
            found.append(csi.PluginCapability(service=Service(type=Service.CONTROLLER_SERVICE)))
        return csi.GetPluginCapabilitiesResponse(capabilities=found)

    @grpc_method(log)
    def Probe(self, request, context):
        ready = self.meta.reachable()
        if not ready:
            log.warning("metaserver unreachable", meta=self.meta.addr)
        ready = ready and not self.starting()
        return csi.ProbeResponse(ready=wrappers_pb2.BoolValue(value=ready))
