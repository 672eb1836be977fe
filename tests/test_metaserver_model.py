"""Random namespace operations against the metaserver and a small model of
POSIX semantics: every operation gets the same errno from both, and the trees
(names, kinds, link counts) match at the end."""

import errno
import random
from dataclasses import dataclass, field

import pytest

from dfs.errors import DfsError
from test_metaserver_support import ROOT, meta, meta_factory

pytestmark = pytest.mark.timeout(120)
__all__ = ["meta", "meta_factory"]

NAMES = [b"a", b"b", b"c"]


@dataclass
class Node:
    is_dir: bool
    parent: int = ROOT
    nlink: int = 1
    children: dict = field(default_factory=dict)


class Model:
    def __init__(self):
        self.nodes = {ROOT: Node(True, ROOT, 2)}

    def dirs(self) -> list[int]:
        return [ino for ino, node in self.nodes.items() if node.is_dir]

    def files(self) -> list[int]:
        return [ino for ino, node in self.nodes.items() if not node.is_dir]

    def create(self, parent: int, name: bytes, ino: int, is_dir: bool) -> int:
        directory = self.nodes[parent]
        if name in directory.children:
            return errno.EEXIST
        self.nodes[ino] = Node(is_dir, parent, 2 if is_dir else 1)
        directory.children[name] = ino
        directory.nlink += is_dir
        return 0

    def unlink(self, parent: int, name: bytes) -> int:
        ino = self.nodes[parent].children.get(name)
        if ino is None:
            return errno.ENOENT
        if self.nodes[ino].is_dir:
            return errno.EISDIR
        del self.nodes[parent].children[name]
        self._drop(ino)
        return 0

    def rmdir(self, parent: int, name: bytes) -> int:
        ino = self.nodes[parent].children.get(name)
        if ino is None:
            return errno.ENOENT
        if not self.nodes[ino].is_dir:
            return errno.ENOTDIR
        if self.nodes[ino].children:
            return errno.ENOTEMPTY
        del self.nodes[parent].children[name]
        self.nodes[parent].nlink -= 1
        del self.nodes[ino]
        return 0

    def link(self, ino: int, parent: int, name: bytes) -> int:
        if name in self.nodes[parent].children:
            return errno.EEXIST
        self.nodes[parent].children[name] = ino
        self.nodes[ino].nlink += 1
        return 0

    def _drop(self, ino: int) -> None:
        self.nodes[ino].nlink -= 1
        if self.nodes[ino].nlink == 0:
            del self.nodes[ino]

    def _inside(self, ino: int, ancestor: int) -> bool:
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT:
                return False
            ino = self.nodes[ino].parent

    def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int) -> int:
        src = self.nodes[p1].children.get(n1)
        if src is None:
            return errno.ENOENT
        dst = self.nodes[p2].children.get(n2)
        if flags == 1 and dst is not None:
            return errno.EEXIST
        if flags == 2 and dst is None:
            return errno.ENOENT
        if dst == src:
            return 0
        if self.nodes[src].is_dir and self._inside(p2, src):
            return errno.EINVAL
        if flags == 2:
            if self.nodes[dst].is_dir and self._inside(p1, dst):
                return errno.EINVAL
            self.nodes[p1].children[n1], self.nodes[p2].children[n2] = dst, src
            self._move(dst, p2, p1)
            self._move(src, p1, p2)
            return 0
        if dst is not None:
            src_dir, dst_dir = self.nodes[src].is_dir, self.nodes[dst].is_dir
            if src_dir and not dst_dir:
                return errno.ENOTDIR
            if dst_dir and not src_dir:
                return errno.EISDIR
            if dst_dir and self.nodes[dst].children:
                return errno.ENOTEMPTY
            if dst_dir:
                self.nodes[p2].nlink -= 1
                del self.nodes[dst]
            else:
                self._drop(dst)
        del self.nodes[p1].children[n1]
        self.nodes[p2].children[n2] = src
        self._move(src, p1, p2)
        return 0

    def _move(self, ino: int, old: int, new: int) -> None:
        node = self.nodes[ino]
        if node.is_dir:
            node.parent = new
            self.nodes[old].nlink -= 1
            self.nodes[new].nlink += 1

    def tree(self, ino: int = ROOT) -> dict:
        node = self.nodes[ino]
        return {name: (self.tree(child) if self.nodes[child].is_dir
                       else ("file", self.nodes[child].nlink))
                for name, child in node.children.items()} | {".nlink": node.nlink}


async def real_tree(c, ino: int = ROOT) -> dict:
    page = await c.call("readdir", ino=ino, offset=0, limit=100)
    tree = {".nlink": (await c.call("getattr", ino=ino))["nlink"]}
    for name, attr, _ in page["entries"]:
        if attr["mode"] & 0o170000 == 0o040000:
            tree[name] = await real_tree(c, attr["ino"])
        else:
            tree[name] = ("file", attr["nlink"])
    return tree


async def outcome(call) -> tuple[int, object]:
    try:
        return 0, await call
    except DfsError as exc:
        return exc.errno, None


@pytest.mark.parametrize("seed", [1, 2])
def test_random_operations_match_the_model(meta, seed):
    rng = random.Random(seed)
    model = Model()
    outcomes: dict[tuple[str, int], int] = {}

    async def body(c):
        for step in range(400):
            kind = rng.choice(["mknod", "mkdir", "mkdir", "unlink", "rmdir", "link",
                               "rename", "rename", "rename"])
            parent, name = rng.choice(model.dirs()), rng.choice(NAMES)
            if kind in ("mknod", "mkdir"):
                if kind == "mknod":
                    call = c.call("mknod", parent=parent, name=name, mode=0o100644, rdev=0,
                                  uid=0, gid=0)
                else:
                    call = c.call("mkdir", parent=parent, name=name, mode=0o755, uid=0, gid=0)
                err, attr = await outcome(call)
                expected = model.create(parent, name, attr["ino"] if attr else 0,
                                        kind == "mkdir")
            elif kind in ("unlink", "rmdir"):
                err, _ = await outcome(c.call(kind, parent=parent, name=name))
                expected = getattr(model, kind)(parent, name)
            elif kind == "link":
                if not model.files():
                    continue
                ino = rng.choice(model.files())
                err, _ = await outcome(c.call("link", ino=ino, parent=parent, name=name))
                expected = model.link(ino, parent, name)
            else:
                p2, n2 = rng.choice(model.dirs()), rng.choice(NAMES)
                flags = rng.choice([0, 0, 1, 2])
                err, _ = await outcome(c.call("rename", parent=parent, name=name,
                                              newparent=p2, newname=n2, flags=flags))
                expected = model.rename(parent, name, p2, n2, flags)
            assert err == expected, f"step {step}: {kind} gave errno {err}, not {expected}"
            outcomes[kind, err] = outcomes.get((kind, err), 0) + 1
        # The run exercised every operation, with successes and refusals.
        assert {kind for kind, err in outcomes if err == 0} == {
            "mknod", "mkdir", "unlink", "rmdir", "link", "rename"}
        assert {err for _, err in outcomes} >= {errno.EEXIST, errno.ENOENT, errno.EINVAL,
                                                errno.ENOTEMPTY}
        assert await real_tree(c) == model.tree()
        status = await c.call("status")
        assert status["directories"] == len(model.dirs())
        assert status["files"] == len(model.files())

    meta.run(body)
