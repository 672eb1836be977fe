"""Where a new volume's content comes from: a snapshot (a restore) or another
volume (a clone), as CreateVolume names it and as the volume records it."""

from dataclasses import dataclass, field

from . import csi_pb2 as csi
from .errors import invalid
from .ids import check_id

SNAPSHOT = "snapshot"
VOLUME = "volume"


@dataclass
class Source:
    kind: str
    id: str
    # Found by the controller when it copies the source (not part of its
    # identity): the directory to copy, and the least capacity the new
    # volume may have to hold it.
    ino: int = field(default=0, compare=False)
    size: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"

    def to_wire(self) -> dict:
        return {self.kind: self.id}

    @classmethod
    def from_wire(cls, wire: dict | None) -> "Source | None":
        if not wire:
            return None
        [(kind, source_id)] = wire.items()
        return cls(kind, source_id)

    def message(self) -> csi.VolumeContentSource:
        if self.kind == SNAPSHOT:
            return csi.VolumeContentSource(
                snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=self.id))
        return csi.VolumeContentSource(
            volume=csi.VolumeContentSource.VolumeSource(volume_id=self.id))


def requested(request) -> Source | None:
    """The content source a CreateVolumeRequest names, its id checked."""
    if not request.HasField("volume_content_source"):
        return None
    content = request.volume_content_source
    kind = content.WhichOneof("type")
    if kind == SNAPSHOT:
        return Source(SNAPSHOT, check_id(content.snapshot.snapshot_id,
                                         "volume_content_source.snapshot.snapshot_id"))
    if kind == VOLUME:
        return Source(VOLUME, check_id(content.volume.volume_id,
                                       "volume_content_source.volume.volume_id"))
    raise invalid("volume_content_source needs a snapshot or a volume")
