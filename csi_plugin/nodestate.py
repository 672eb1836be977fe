"""What this node has staged and published, kept on local disk.

The kernel's mount table says what is mounted but not which volume a path
holds or with which capability it was published; this record does, so the
plugin can answer repeated calls idempotently and repair broken mounts after
a restart. One JSON file per volume, replaced atomically.
"""

import json
import os
from dataclasses import dataclass, field

from dfs.durable import replace_file


@dataclass
class Target:
    readonly: bool
    mode: int
    flags: list[str]

    def to_wire(self) -> dict:
        return {"readonly": self.readonly, "mode": self.mode, "flags": self.flags}

    @classmethod
    def from_wire(cls, wire: dict) -> "Target":
        return cls(bool(wire["readonly"]), int(wire["mode"]), list(wire["flags"]))


@dataclass
class VolumeState:
    volume_id: str
    staging: str = ""
    targets: dict[str, Target] = field(default_factory=dict)
    # The attachment epoch the staging mount was made under (0: none).
    epoch: int = 0


class NodeState:
    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def _path(self, volume_id: str) -> str:
        return os.path.join(self.directory, f"{volume_id}.json")

    def load(self, volume_id: str) -> VolumeState:
        try:
            with open(self._path(volume_id)) as f:
                wire = json.load(f)
        except FileNotFoundError:
            return VolumeState(volume_id)
        return VolumeState(volume_id, wire.get("staging", ""),
                           {path: Target.from_wire(t) for path, t in wire["targets"].items()},
                           int(wire.get("epoch", 0)))

    def save(self, state: VolumeState) -> None:
        path = self._path(state.volume_id)
        if not state.staging and not state.targets:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        wire = {"staging": state.staging, "epoch": state.epoch,
                "targets": {p: t.to_wire() for p, t in sorted(state.targets.items())}}
        replace_file(path, json.dumps(wire).encode())

    def volume_ids(self) -> list[str]:
        return sorted(name[:-5] for name in os.listdir(self.directory) if name.endswith(".json"))
