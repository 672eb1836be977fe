"""StorageClass parameters that dfs understands."""

from dfs.openfile import MIN_READ_CACHE_BYTES

from .capabilities import MiB
from .errors import invalid

# Keys the external-provisioner adds itself (PVC name, namespace, ...) are
# information for the plugin, not settings; they are accepted and ignored.
_SIDECAR_PREFIX = "csi.storage.k8s.io/"
MAX_REPLICAS = 16
MIN_READ_CACHE_MIB = MIN_READ_CACHE_BYTES // MiB
MAX_READ_CACHE_MIB = 1 << 20


def _count(key: str, text: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise invalid(f"parameter {key}={text!r} must be a whole number from {low} to {high}")
    return int(text)


def parse(parameters) -> dict:
    """The dfs settings in `parameters`, normalised; INVALID_ARGUMENT on anything else.

    - `replicas`: copies of each chunk of the volume's files (1..16); set as
      the replication factor of the volume directory, recorded with the
      volume and handed to nodes in the volume context.
    - `inodeLimit`: most files and directories the volume may hold (0 = no limit).
    - `readCacheMiB`: the read cache of the volume's mount on each node
      (`dfs mount --read-cache`; 16..1048576, absent = the mount's default).
    - `xattrs`: "false" mounts the volume without extended attributes
      (`dfs mount --no-xattrs`); "true" or absent serves them.
    """
    settings = {}
    for key, value in parameters.items():
        if key.startswith(_SIDECAR_PREFIX):
            continue
        if key == "replicas":
            settings[key] = _count(key, value, 1, MAX_REPLICAS)
        elif key == "inodeLimit":
            settings[key] = _count(key, value, 0, 1 << 62)
        elif key == "readCacheMiB":
            settings[key] = _count(key, value, MIN_READ_CACHE_MIB, MAX_READ_CACHE_MIB)
        elif key == "xattrs":
            if value.lower() not in ("true", "false"):
                raise invalid(f"parameter xattrs={value!r} must be 'true' or 'false'")
            settings[key] = value.lower()
        else:
            raise invalid(f"unknown parameter {key!r}; dfs knows 'replicas', 'inodeLimit', "
                          "'readCacheMiB' and 'xattrs'")
    return settings


def check_snapshot_parameters(parameters) -> None:
    """VolumeSnapshotClass parameters: a snapshot is a copy of the volume with
    nothing to choose, so INVALID_ARGUMENT for any but the sidecars' own."""
    unknown = sorted(key for key in parameters if not key.startswith(_SIDECAR_PREFIX))
    if unknown:
        raise invalid(f"unknown snapshot parameters {unknown}; dfs takes none")
