"""What every part of the metaserver shares: storage, settings, in-memory state."""

from dataclasses import dataclass

from dfs.ops import CHUNK
from dfs.rpc import ClientPool

from .dirleases import DirLeases
from .fences import Fences
from .namespace import Namespace
from .opens import OpenFiles
from .registry import Registry
from .sessions import Leases, Reservations, Sessions
from .store import Store


@dataclass
class Settings:
    chunk_size: int
    replicas: int
    heartbeat_timeout: float
    session_ttl: float
    lease_seconds: float
    # How long removed files stay in /.trash (0: they are deleted at once).
    trash_seconds: float = 0.0

    def wanted(self, factor: int) -> int:
        """Copies a chunk or file with replication factor `factor` should have."""
        return factor or self.replicas


@dataclass
class Context:
    settings: Settings
    store: Store
    namespace: Namespace
    sessions: Sessions
    opens: OpenFiles
    reservations: Reservations
    leases: Leases
    fences: Fences
    registry: Registry
    dirleases: DirLeases
    # Connections to chunk servers, for version bumps, truncation and checks.
    chunkservers: ClientPool

    @classmethod
    def create(cls, settings: Settings, store: Store, secret: bytes) -> "Context":
        opens = OpenFiles()
        return cls(settings, store, Namespace(settings.chunk_size, opens, settings.trash_seconds),
                   Sessions(settings.session_ttl), opens, Reservations(),
                   Leases(settings.lease_seconds), Fences(), Registry(settings.heartbeat_timeout),
                   DirLeases(), ClientPool(secret, CHUNK, connect_timeout=3.0))
