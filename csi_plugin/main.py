"""dfs-csi: the Kubernetes CSI plugin for dfs, serving gRPC on a unix socket."""

import argparse
import os
import shutil
import signal
import socket
import sys
import threading
import time
from concurrent import futures

import grpc

from dfs import logs
from dfs.config import (ConfigError, add_cluster_id_arg, add_log_level_arg,
                        add_secret_file_arg, address_arg, load_secret, zone_arg)

from . import csi_pb2_grpc, nodemetrics
from .controller import ControllerService
from .errors import CsiError
from .identity import IdentityService
from .ids import check_node_id
from .metaclient import MetaClient
from .mounts import Mounter
from .node import NodeService
from .nodestate import NodeState
from .snapshots import SnapshotStore
from .volumes import VolumeStore

log = logs.get_logger("csi")

# Each CSI call holds a worker while it waits on the metaserver or a mount
# command; the sidecars send few calls at once, so a small pool is plenty.
WORKERS = 16
STOP_GRACE = 5.0
REGISTER_RETRY = 2.0


def socket_path(endpoint: str) -> str:
    for prefix in ("unix://", "unix:"):
        if endpoint.startswith(prefix):
            path = endpoint[len(prefix):]
            break
    else:
        raise ValueError(f"endpoint must be unix:///path/to/csi.sock, got {endpoint!r}")
    if not os.path.isabs(path):
        raise ValueError(f"endpoint path must be absolute, got {endpoint!r}")
    return path


def default_dfs_command() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "dfs")
    return beside if os.access(beside, os.X_OK) else (shutil.which("dfs") or "dfs")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dfs-csi",
        description="Kubernetes CSI plugin for dfs. A volume is the directory "
                    "/volumes/<volume-id> with a quota equal to its capacity. Run one "
                    "controller (--mode controller, beside the provisioner, attacher, "
                    "resizer and snapshotter sidecars) and one node plugin per host "
                    "(--mode node, beside the node-driver-registrar), or both in one "
                    "process with --mode all.",
        epilog="Example: dfs-csi --endpoint unix:///csi/csi.sock --meta 10.0.0.5:7000 "
               "--secret-file /etc/dfs/secret --node-id $(hostname) --mode node")
    p.add_argument("--endpoint", default=os.environ.get("CSI_ENDPOINT"),
                   help="unix socket to serve on, as unix:///path/csi.sock "
                        "(default: $CSI_ENDPOINT)")
    p.add_argument("--meta", required=True, metavar="HOST:PORT",
                   help="address of the dfs metaserver")
    add_secret_file_arg(p, also="; also handed to the mounts this plugin starts")
    add_cluster_id_arg(p, "the plugin answers UNAVAILABLE, and the mounts it starts "
                          "fail, with")
    p.add_argument("--node-id", default=os.environ.get("NODE_ID") or socket.gethostname(),
                   help="this node's name as Kubernetes knows it (default: $NODE_ID or the "
                        "host name); needed by --mode node and all")
    p.add_argument("--zone", type=lambda text: zone_arg(text) or "", metavar="NAME",
                   help="node mode: the zone of this node, as its chunk servers name theirs "
                        "(dfs-chunkserver --zone): the volumes mounted here read a chunk "
                        "from a replica in it when there is one (dfs mount --zone). "
                        "Default: the node id, the zone deploy/kubernetes gives the chunk "
                        "servers of each node; empty: none, reads take turns over replicas")
    p.add_argument("--mode", choices=("controller", "node", "all"), default="all",
                   help="which CSI services to serve besides Identity (default: all)")
    p.add_argument("--state-dir", default="/var/lib/dfs-csi", metavar="DIR",
                   help="node mode: where the plugin records what it staged and published, "
                        "and the logs of the mounts it starts; keep it across restarts "
                        "(default: /var/lib/dfs-csi)")
    p.add_argument("--dfs-command", default=default_dfs_command(), metavar="PATH",
                   help="node mode: the dfs command used to mount and unmount volumes "
                        "(default: the dfs beside this Python, else the one on $PATH)")
    p.add_argument("--metrics-listen", type=address_arg, metavar="HOST:PORT",
                   help="node mode: serve at http://HOST:PORT/metrics the metrics of every "
                        "volume's mount on this node (FUSE requests by operation with "
                        "their latency, bytes read and written), each labelled with its "
                        "volume_id; mounts made before this was given are not among them "
                        "(default: not served)")
    p.add_argument("--max-volumes-per-node", type=int, default=0, metavar="N",
                   help="node mode: most volumes Kubernetes may publish to this node "
                        "(default: 0, no limit)")
    add_log_level_arg(p)
    return p


def node_zone(given: str | None, node_id: str) -> str:
    """The zone this node's mounts read from first: --zone (empty: none),
    else the node id if it makes a valid zone name."""
    if given is not None:
        return given
    try:
        return zone_arg(node_id) or ""
    except argparse.ArgumentTypeError:
        return ""


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        if not args.endpoint:
            raise ValueError("say where to serve: --endpoint unix:///path/csi.sock "
                             "or $CSI_ENDPOINT")
        path = socket_path(args.endpoint)
        secret = load_secret(args.secret_file)
        node_id = check_node_id(args.node_id) if args.mode != "controller" else ""
        zone = node_zone(args.zone, node_id) if args.mode != "controller" else ""
        if args.max_volumes_per_node < 0:
            raise ValueError("--max-volumes-per-node must not be negative")
    except (ValueError, ConfigError) as exc:
        print(f"dfs-csi: {exc}", file=sys.stderr)
        return 2
    except CsiError as exc:
        print(f"dfs-csi: --node-id: {exc.message}", file=sys.stderr)
        return 2

    meta = MetaClient(args.meta, secret, args.cluster_id)
    store = VolumeStore(meta)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS))
    node = None
    if args.mode != "controller":
        state = NodeState(args.state_dir)
        metrics_dir = os.path.join(args.state_dir, "metrics") if args.metrics_listen else None
        mounter = Mounter([args.dfs_command], args.meta, args.secret_file, args.state_dir,
                          args.cluster_id, metrics_dir, zone)
        if metrics_dir:
            os.makedirs(metrics_dir, mode=0o700, exist_ok=True)
            nodemetrics.serve(args.metrics_listen, metrics_dir, state.volume_ids)
        node = NodeService(node_id, store, state, mounter, args.max_volumes_per_node)
        csi_pb2_grpc.add_NodeServicer_to_server(node, server)
    if args.mode != "node":
        csi_pb2_grpc.add_ControllerServicer_to_server(
            ControllerService(store, SnapshotStore(meta)), server)
    starting = (lambda: not node.registered.is_set()) if node else (lambda: False)
    csi_pb2_grpc.add_IdentityServicer_to_server(
        IdentityService(meta, controller=args.mode != "node", starting=starting), server)

    # Register before serving when the metaserver answers, so the first
    # ControllerPublishVolume already knows this node; else keep trying.
    if node is not None and meta.reachable():
        _register(node)

    if os.path.exists(path):
        os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    server.add_insecure_port(f"unix://{path}")
    server.start()
    log.info("serving", endpoint=path, mode=args.mode, meta=args.meta, node=node_id or "-",
             zone=zone or "-")
    if node is not None:
        threading.Thread(target=_node_startup, args=(node,), name="node-startup",
                         daemon=True).start()

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    log.info("stopping; mounts stay in place", endpoint=path)
    server.stop(STOP_GRACE).wait()
    meta.close()
    if os.path.exists(path):
        os.unlink(path)
    return 0


def _register(node: NodeService) -> None:
    try:
        node.register()
    except CsiError as exc:
        log.warning("cannot register node yet", node=node.node_id, reason=exc.message)


def _node_startup(node: NodeService) -> None:
    """Announce the node and repair the mounts an earlier run left behind."""
    while not node.registered.is_set():
        time.sleep(REGISTER_RETRY)
        _register(node)
    node.repair_all()


if __name__ == "__main__":
    sys.exit(main())
