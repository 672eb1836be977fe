"""Names, volume and snapshot ids and node ids, checked so none can leave the
directory it names an entry of (/volumes/, /.dfs-csi/snapshots/, /.dfs-csi/nodes/).

A volume or snapshot id is the CSI name itself when the name is already a
safe file name (Kubernetes' `pvc-<uuid>` and `snapshot-<uuid>` always are),
which keeps `/volumes/<id>` readable for operators. Any other name gets `_`
plus a SHA-256 prefix: the leading `_` cannot start a safe name, so the two
kinds never collide.
"""

import hashlib
import re

from .errors import invalid

# CSI caps names and ids at 128 bytes; node ids may reach 256.
MAX_NAME = 128
MAX_NODE_ID = 256

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HASHED = re.compile(r"_[0-9a-f]{40}")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}")
# The spec's banned characters in a name: C0 controls except \t \n \r, DEL, C1.
_BANNED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def check_name(name: str) -> None:
    if not name:
        raise invalid("name is required")
    if len(name.encode()) > MAX_NAME:
        raise invalid(f"name is longer than {MAX_NAME} bytes")
    if _BANNED.search(name):
        raise invalid("name contains control characters")


def id_for(name: str) -> str:
    """The volume or snapshot id of a CSI name."""
    check_name(name)
    if _SAFE.fullmatch(name):
        return name
    return "_" + hashlib.sha256(name.encode()).hexdigest()[:40]


def check_id(value: str, field: str) -> str:
    """Return `value` if `id_for` could have made it, else INVALID_ARGUMENT
    naming the request's `field`."""
    if not value:
        raise invalid(f"{field} is required")
    if not (_SAFE.fullmatch(value) or _HASHED.fullmatch(value)):
        raise invalid(f"{field} {value[:MAX_NAME]!r} is not a dfs-csi id "
                      "(letters, digits, '.', '_', '-'; at most 128 bytes)")
    return value


def check_volume_id(volume_id: str) -> str:
    return check_id(volume_id, "volume_id")


def check_snapshot_id(snapshot_id: str) -> str:
    return check_id(snapshot_id, "snapshot_id")


def check_node_id(node_id: str) -> str:
    if not node_id:
        raise invalid("node_id is required")
    if not _NODE.fullmatch(node_id):
        raise invalid(f"node_id {node_id[:MAX_NODE_ID]!r} is not valid (letters, digits, "
                      "'.', '_', '-'; at most 256 bytes)")
    return node_id
