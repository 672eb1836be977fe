"""Where a command finds its cluster: the metaserver address and the secret.

Either `--meta HOST:PORT` with the secret from `--secret-file`, `$DFS_SECRET`
or `$DFS_SECRET_FILE`; or `--data-dir DIR` of a local cluster started by
`dfs up`, which holds `cluster.json` (the addresses) and `secret`.
"""

import argparse
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .errors import DfsError
from .ops import check_zone
from .rpc import parse_addr

CLUSTER_FILE = "cluster.json"
SECRET_FILE = "secret"


class ConfigError(Exception):
    """The command line or environment does not say how to reach the cluster."""


def load_secret(secret_file: str | None) -> bytes:
    if secret_file:
        path = Path(secret_file)
    elif os.environ.get("DFS_SECRET"):
        return os.environ["DFS_SECRET"].encode()
    elif os.environ.get("DFS_SECRET_FILE"):
        path = Path(os.environ["DFS_SECRET_FILE"])
    else:
        raise ConfigError("no cluster secret: pass --secret-file, or set DFS_SECRET "
                          "or DFS_SECRET_FILE")
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret file {path}: {exc.strerror}") from None
    if len(secret) < 16:
        raise ConfigError(f"the secret in {path} is shorter than 16 bytes")
    return secret


def make_secret(path: Path) -> bytes:
    """Create a random secret file readable by root only, or return the existing one."""
    if path.exists():
        return path.read_bytes().strip()
    secret = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    return secret


@dataclass
class ClusterRef:
    meta: str
    secret: bytes
    secret_file: str | None = None


def address_arg(text: str) -> str:
    """An argparse type: a HOST:PORT, checked."""
    try:
        parse_addr(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def zone_arg(text: str) -> str | None:
    """An argparse type: a zone name, checked; None for an empty one."""
    if not text:
        return None
    try:
        check_zone(text)
    except DfsError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def add_cluster_id_arg(parser, who: str) -> None:
    """--cluster-id, which pins a client to one cluster's database."""
    parser.add_argument(
        "--cluster-id", type=cluster_id_arg, default=0, metavar="HEX",
        help=f"the cluster id 'dfs status' shows: {who} a metaserver whose database is "
             "another cluster's, such as a new, empty one started in the old one's "
             "place. Default: the id is learned at the first connection and checked on "
             "every later one")


def cluster_id_arg(text: str) -> int:
    """An argparse type: a cluster id, in hexadecimal as `dfs status` shows it."""
    try:
        value = int(text, 16)
    except ValueError:
        value = 0
    if not 0 < value < 1 << 64:
        raise argparse.ArgumentTypeError(
            f"a cluster id is the hexadecimal number 'dfs status' shows, not {text!r}")
    return value


def add_secret_file_arg(parser, also: str = "") -> None:
    """--secret-file, as every dfs command that talks to a cluster takes it
    (`parser` may be an argument group); `also` ends its help."""
    parser.add_argument("--secret-file", metavar="PATH",
                        help="file holding the cluster secret (default: $DFS_SECRET, or the "
                             f"file named by $DFS_SECRET_FILE){also}")


def add_log_level_arg(parser) -> None:
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="least severe log level written to stderr (default: info)")


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster (either --meta or --data-dir)")
    group.add_argument("--meta", metavar="HOST:PORT",
                       help="address of the metaserver")
    add_secret_file_arg(group)
    group.add_argument("--data-dir", metavar="DIR",
                       help="folder of a local cluster started with 'dfs up'")


def read_cluster_file(data_dir: Path) -> dict:
    try:
        return json.loads((data_dir / CLUSTER_FILE).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{data_dir} holds no local cluster (no {CLUSTER_FILE}); "
                          f"start one with 'dfs up --data-dir {data_dir}'") from None


def cluster_from_args(args: argparse.Namespace) -> ClusterRef:
    if args.meta:
        return ClusterRef(args.meta, load_secret(args.secret_file), args.secret_file)
    data_dir = Path(args.data_dir or os.environ.get("DFS_DATA_DIR", ""))
    if not args.data_dir and not os.environ.get("DFS_DATA_DIR"):
        raise ConfigError("say which cluster: --meta HOST:PORT (with the secret) or "
                          "--data-dir DIR of a local cluster")
    info = read_cluster_file(data_dir)
    secret_path = data_dir / SECRET_FILE
    return ClusterRef(info["meta"], load_secret(str(secret_path)), str(secret_path))


def write_ready_file(path: Path, addr: str) -> None:
    """Tell whoever started a service where it listens (port 0 picks one).
    Written under a temporary name and renamed, so a reader never sees half."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(addr + "\n")
    os.replace(temp, path)
