"""Which volume capabilities dfs serves, and how capacity ranges become sizes."""

from . import csi_pb2 as csi
from .errors import invalid, out_of_range

Mode = csi.VolumeCapability.AccessMode

# A dfs volume is a directory every mount sees coherently, so any access mode
# works; the plugin only enforces how many nodes and targets may hold it.
SINGLE_NODE_MODES = {Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_READER_ONLY,
                     Mode.SINGLE_NODE_SINGLE_WRITER, Mode.SINGLE_NODE_MULTI_WRITER}
READ_ONLY_MODES = {Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY}
# Modes that allow one node to publish the volume at several target paths
# (the second table of NodePublishVolume in the spec).
MULTI_TARGET_MODES = {Mode.SINGLE_NODE_MULTI_WRITER, Mode.MULTI_NODE_READER_ONLY,
                      Mode.MULTI_NODE_SINGLE_WRITER, Mode.MULTI_NODE_MULTI_WRITER}
KNOWN_MODES = SINGLE_NODE_MODES | MULTI_TARGET_MODES
# Modes with at most one writing node: publishing the volume to a writer moves
# its attachment epoch, which fences out the node it was on before.
SOLE_WRITER_MODES = (SINGLE_NODE_MODES - READ_ONLY_MODES) | {Mode.MULTI_NODE_SINGLE_WRITER}

# The dfs mount is a FUSE filesystem: no other fs_type can be honoured.
FS_TYPES = {"", "dfs", "fuse.dfs"}
# Mount flags applied to the bind mount at the target path; anything that
# would change the FUSE mount itself is not the pod's to choose.
MOUNT_FLAGS = {"ro", "rw", "noatime", "relatime", "nodiratime", "nosuid", "nodev", "noexec"}

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_CAPACITY = GiB


def mode_name(mode: int) -> str:
    return Mode.Mode.Name(mode) if mode in Mode.Mode.values() else str(mode)


def check_capability(cap: csi.VolumeCapability) -> None:
    """Raise INVALID_ARGUMENT unless dfs can serve `cap`."""
    kind = cap.WhichOneof("access_type")
    if kind == "block":
        raise invalid("block access is not supported: a dfs volume is a directory; "
                      "request a filesystem (mount) volume")
    if kind != "mount":
        raise invalid("volume_capability needs an access type (mount)")
    if not cap.HasField("access_mode") or cap.access_mode.mode not in KNOWN_MODES:
        raise invalid("volume_capability needs a known access_mode")
    if cap.mount.fs_type not in FS_TYPES:
        raise invalid(f"fs_type {cap.mount.fs_type!r} is not supported: dfs volumes are "
                      "mounted as dfs (leave fs_type empty)")
    unknown = [flag for flag in cap.mount.mount_flags if flag not in MOUNT_FLAGS]
    if unknown:
        raise invalid(f"mount flags {unknown} are not supported; allowed: "
                      f"{sorted(MOUNT_FLAGS)}")


def check_capabilities(caps) -> None:
    if not caps:
        raise invalid("volume_capabilities is required")
    for cap in caps:
        check_capability(cap)


def require_capability(request, field: str = "volume_capability") -> csi.VolumeCapability:
    if not request.HasField(field):
        raise invalid(f"{field} is required")
    cap = getattr(request, field)
    check_capability(cap)
    return cap


def read_only(cap: csi.VolumeCapability) -> bool:
    return cap.access_mode.mode in READ_ONLY_MODES or "ro" in cap.mount.mount_flags


def _range(capacity: csi.CapacityRange) -> tuple[int, int]:
    required, limit = capacity.required_bytes, capacity.limit_bytes
    if required < 0 or limit < 0:
        raise invalid("capacity_range bytes must not be negative")
    if limit and required > limit:
        raise invalid(f"required_bytes {required} is more than limit_bytes {limit}")
    return required, limit


def size_for_create(capacity: csi.CapacityRange | None, content: int = 0) -> int:
    """The quota for a new volume: the request rounded up to whole MiB, never
    above the limit; when nothing is asked, 1 GiB or `content` if that is more.

    `content` is the least a volume made from a content source needs: OUT_OF_RANGE
    if the request leaves less (the spec's size rule for a snapshot, and
    Kubernetes' for a clone).
    """
    required, limit = _range(capacity) if capacity is not None else (0, 0)
    default = max(DEFAULT_CAPACITY, content)
    wanted = required or (min(default, limit) if limit else default)
    size = -(-wanted // MiB) * MiB
    size = min(size, limit) if limit else size
    if size < content:
        raise out_of_range(f"the volume's content source needs {content} bytes, more than "
                           f"the {size} bytes of the requested capacity")
    return size


def size_fits(size: int, capacity: csi.CapacityRange | None) -> bool:
    if capacity is None:
        return True
    required, limit = _range(capacity)
    return size >= required and (not limit or size <= limit)


def size_for_expand(current: int, capacity: csi.CapacityRange) -> int:
    """The quota after an expansion: exactly what was asked, never a shrink."""
    required, limit = _range(capacity)
    if not required and not limit:
        raise invalid("capacity_range needs required_bytes or limit_bytes")
    if limit and current > limit:
        raise out_of_range(f"the volume already holds {current} bytes of quota, more than "
                           f"limit_bytes {limit}; volumes cannot shrink")
    return max(current, required or limit)
