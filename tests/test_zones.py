"""Zones (failure domains): the copies of a chunk go to as many zones as the
cluster has before two share one, chunks whose copies share a zone are copied
to another once one joins, and deleting extra copies keeps one in each zone.
A mount given a zone reads from the replicas in it first.

A server's zone is its host unless it names one (--zone); the servers here
listen on different loopback addresses (127.0.0.2 is loopback too) or name
their zones."""

import errno
import hashlib
import os
import time

import msgpack
import pytest
import trio

from conftest import TEST_CHUNK_SIZE, Cluster
from dfs.chunkio import ChunkIO, Placement
from dfs.errors import DfsError
from dfs.ops import META_CS
from dfs.auth import client_handshake
from dfs.framing import FramedStream, encode_fields
from dfs.rpc import Client, parse_addr
from faults import addr_of, alive, chunks_of, kill_server, restart_server, status, wait_for
from metaserver.records import ChunkServerRecord, pack, unpack
from metaserver.registry import Registry, ServerState
from test_metrics import free_port, scrape


def add_server(cluster, listen: str, **args) -> str:
    """Start one more chunk server of the cluster, listening on `listen`,
    with `args` as its flags; return its address once it has registered."""
    layout = cluster.local.load()
    layout.chunkservers.append(listen)
    # The flags all of the cluster's servers start with (a restart included).
    layout.chunkserver_args = args
    cluster.local.save(layout)
    cluster.local.start_chunkserver(layout, len(layout.chunkservers) - 1)
    addr = addr_of(cluster.local, f"cs{len(layout.chunkservers)}")
    wait_for(lambda: alive(cluster.ref, addr), 30, f"chunk server {addr} to register")
    return addr


def write_files(cluster, folder: str, count: int) -> dict[str, str]:
    (cluster.mnt / folder).mkdir(exist_ok=True)
    digests = {}
    for i in range(count):
        data = os.urandom(2 * TEST_CHUNK_SIZE)
        (cluster.mnt / folder / f"f{i}").write_bytes(data)
        digests[f"/{folder}/f{i}"] = hashlib.sha256(data).hexdigest()
    return digests


def holders(cluster, paths) -> list[set[str]]:
    """The addresses holding each chunk of each file."""
    return [{addr for _, addr in reply["servers"]} for path in paths
            for reply in chunks_of(cluster.ref, path, TEST_CHUNK_SIZE)]


def zones_of(cluster) -> dict[str, str]:
    return {cs["addr"]: cs["zone"] for cs in status(cluster.ref)["chunkservers"]}


def check_contents(cluster, digests: dict[str, str]) -> None:
    check_contents_at(cluster.mnt, digests)


def check_contents_at(mnt, digests: dict[str, str]) -> None:
    for path, digest in digests.items():
        assert hashlib.sha256((mnt / path[1:]).read_bytes()).hexdigest() == digest


@pytest.fixture
def rack_a(tmp_path):
    """A cluster of two chunk servers in zone rack-a."""
    cluster = Cluster(tmp_path, chunkservers=2, heartbeat_timeout=2,
                      chunkserver_args={"zone": "rack-a"})
    try:
        yield cluster.up()
    finally:
        cluster.teardown()


def test_copies_sharing_a_host_are_spread_once_another_host_joins(tmp_path):
    cluster = Cluster(tmp_path, chunkservers=2, heartbeat_timeout=2)
    try:
        cluster.up()
        digests = write_files(cluster, "data", 6)
        st = status(cluster.ref)
        assert {cs["zone"] for cs in st["chunkservers"]} == {"127.0.0.1"}
        # One zone: nothing better can be done, so nothing is misplaced.
        assert st["misplaced"] == 0
        assert "zones: 1: every chunk's copies are in it" in cluster.dfs(
            "status", *cluster.cli_args).stdout

        other = add_server(cluster, "127.0.0.2:0")
        assert zones_of(cluster)[other] == "127.0.0.2"

        def spread() -> bool:
            st = status(cluster.ref)
            placed = holders(cluster, digests)
            return (st["misplaced"] == 0 and st["balancing"] == 0
                    and st["under_replicated"] == 0
                    and all(len(h) == 2 and other in h for h in placed))

        wait_for(spread, 90, "every chunk to have one copy on the other host and one here")
        check_contents(cluster, digests)
        out = cluster.dfs("status", *cluster.cli_args).stdout
        assert "zones: 2\n" in out and "zone 127.0.0.2" in out and "health: ok" in out
    finally:
        cluster.teardown()


def test_named_zones_take_new_chunks_and_keep_one_copy_each_when_trimmed(rack_a):
    rack_b = add_server(rack_a, "127.0.0.1:0", zone="rack-b")
    zones = zones_of(rack_a)
    assert sorted(zones.values()) == ["rack-a", "rack-a", "rack-b"]
    wait_for(lambda: status(rack_a.ref)["misplaced"] == 0
             and status(rack_a.ref)["balancing"] == 0, 60, "the spares to be spread")

    digests = write_files(rack_a, "new", 4)
    wait_for(lambda: all(len(h) == 2 and rack_b in h for h in holders(rack_a, digests)),
             60, "every new chunk to have a copy in rack-b")

    set_factor(rack_a, digests, 3)
    wait_for(lambda: all(len(h) == 3 for h in holders(rack_a, digests)), 60,
             "three copies of each chunk")
    spreads_before = _spreads_planned(rack_a)
    set_factor(rack_a, digests, 2)

    def trimmed() -> bool:
        placed = holders(rack_a, digests)
        return all(len(h) == 2 for h in placed) and placed

    for held in wait_for(trimmed, 60, "the third copies to be deleted"):
        assert sorted(zones[addr] for addr in held) == ["rack-a", "rack-b"]
    # Kept spread by the trim itself, not put right by copies after it.
    assert _spreads_planned(rack_a) == spreads_before
    assert status(rack_a.ref)["misplaced"] == 0
    check_contents(rack_a, digests)
    # dfs info names each copy's zone (a server's host, the default, goes unsaid).
    text = rack_a.dfs("info", *rack_a.cli_args, next(iter(digests))).stdout
    assert text.count("(zone rack-a)") == text.count("(zone rack-b)") == 2


def test_a_mount_reads_from_the_replicas_in_its_zone(rack_a):
    # rack-b's servers count what they serve on their metrics.
    ports = [free_port(), free_port()]
    for port in ports:
        add_server(rack_a, "127.0.0.1:0", zone="rack-b",
                   metrics_listen=f"127.0.0.1:{port}")
    rack_b = {addr for addr, zone in zones_of(rack_a).items() if zone == "rack-b"}
    digests = write_files(rack_a, "data", 4)
    wait_for(lambda: all(len(h) == 2 and h & rack_b for h in holders(rack_a, digests))
             and status(rack_a.ref)["balancing"] == 0, 60,
             "every chunk to have a copy in rack-b")
    size = len(digests) * 2 * TEST_CHUNK_SIZE

    def served_by_rack_b() -> float:
        return sum(scrape(port)["dfs_chunkserver_read_bytes_total"] for port in ports)

    def read_through(zone: str) -> dict[str, float]:
        """Read every file cold through a new mount in `zone`; return its
        count of bytes from replicas in its zone and in others."""
        metrics = free_port()
        mnt = rack_a.mount("/", "--zone", zone, "--metrics-listen", f"127.0.0.1:{metrics}")
        try:
            check_contents_at(mnt, digests)
            samples = scrape(metrics)
        finally:
            rack_a.unmount(mnt)
        return {where: samples[f'dfs_fuse_replica_read_bytes_total{{zone="{where}"}}']
                for where in ("same", "other")}

    # Each of these reads would take turns over both zones without one.
    before = served_by_rack_b()
    in_b = read_through("rack-b")
    assert in_b["same"] >= size and in_b["other"] == 0
    assert served_by_rack_b() - before >= size
    before = served_by_rack_b()
    in_a = read_through("rack-a")
    assert in_a["same"] >= size and in_a["other"] == 0
    assert served_by_rack_b() == before

    # With its zone's servers gone, a mount reads from the others.
    for name in ("cs3", "cs4"):
        kill_server(rack_a.local, name)
    fallen_over = read_through("rack-b")
    assert fallen_over["same"] == 0 and fallen_over["other"] >= size


def test_a_dead_server_keeps_its_zone_across_a_metaserver_restart(rack_a):
    gone = addr_of(rack_a.local, "cs2")
    kill_server(rack_a.local, "cs2")
    kill_server(rack_a.local, "meta")
    restart_server(rack_a.local, "meta")
    wait_for(lambda: alive(rack_a.ref, addr_of(rack_a.local, "cs1")), 30,
             "cs1 to register")
    [dead] = [cs for cs in status(rack_a.ref)["chunkservers"] if cs["addr"] == gone]
    # Its named zone, not its host's, before it is heard from again.
    assert not dead["alive"] and dead["zone"] == "rack-a"


def test_a_record_from_a_newer_version_is_read_without_its_new_fields():
    record = ChunkServerRecord("10.0.0.1:9500", True, "rack-a")
    assert unpack(ChunkServerRecord, pack(record)) == record
    newer = msgpack.packb(["10.0.0.1:9500", True, "rack-a", "a field added later"])
    assert unpack(ChunkServerRecord, newer) == record
    # Written before zones were kept: its host's zone.
    assert unpack(ChunkServerRecord, msgpack.packb(["10.0.0.1:9500", False])).zone == ""
    with pytest.raises(TypeError):
        unpack(ChunkServerRecord, msgpack.packb([]))


def test_a_mount_learns_the_zones_of_the_chunk_servers_on_its_host(rack_a):
    # Every server registers from 127.0.0.1: this host, as a mount here is.
    assert session_zones(rack_a.ref, "127.0.0.1") == ["rack-a"]
    assert session_zones(rack_a.ref, "127.0.0.2") == []
    digests = write_files(rack_a, "data", 2)
    metrics = free_port()
    mnt = rack_a.mount("/", "--metrics-listen", f"127.0.0.1:{metrics}")
    try:
        check_contents_at(mnt, digests)
        samples = scrape(metrics)
    finally:
        rack_a.unmount(mnt)
    assert samples['dfs_fuse_replica_read_bytes_total{zone="same"}'] >= (
        len(digests) * 2 * TEST_CHUNK_SIZE)
    assert samples['dfs_fuse_replica_read_bytes_total{zone="other"}'] == 0


def session_zones(ref, source: str) -> list[str]:
    """The zones session_open answers a client connecting from `source`."""
    async def run():
        host, port = parse_addr(ref.meta)
        stream = await trio.open_tcp_stream(host, port, local_address=source)
        framed = FramedStream(stream)
        try:
            await client_handshake(framed, ref.secret)
            await framed.send_request(1, "session_open", encode_fields(dict(
                host="test", mountpoint="/test", pid=os.getpid(), fence=None)))
            _, _, error, reply = await framed.receive()
            assert error == 0, reply
            await framed.send_request(2, "session_renew", encode_fields(dict(
                session=reply["session"])))
            _, _, error, renewed = await framed.receive()
            assert error == 0 and renewed["zones"] == reply["zones"]
            return reply["zones"]
        finally:
            await framed.aclose()
    return trio.run(run)


def test_reads_prefer_the_zone_and_take_turns_within_it():
    chunkio = ChunkIO(b"s" * 32, zones=lambda: {"b"})
    placement = Placement(7, 1, ("x:1", "y:1", "z:1"), zones=("a", "b", "b"))
    orders = [chunkio._read_order(placement) for _ in range(4)]
    for order in orders:
        assert [near for _addr, near in order] == [True, True, False]
        assert order[-1][0] == "x:1"
    assert {order[0][0] for order in orders} == {"y:1", "z:1"}
    # Without a zone (or from a metaserver that sends none) all take turns.
    anywhere = ChunkIO(b"s" * 32)
    assert {anywhere._read_order(placement)[0][0] for _ in range(3)} == {"x:1", "y:1", "z:1"}
    unzoned = Placement.from_wire({"chunk": 7, "version": 1, "zones": ["a"],
                                   "servers": [[1, "x:1"], [2, "y:1"]]})
    assert unzoned.zones == ()
    assert not any(near for _addr, near in chunkio._read_order(unzoned))


def set_factor(cluster, paths, replicas: int) -> None:
    for path in paths:
        cluster.dfs("replicas", "set", *cluster.cli_args, path, str(replicas))


def register(ref, **fields) -> dict:
    """cs_register as a chunk server sends it (meta_call takes `addr` as
    where to call)."""
    async def run():
        client = Client(ref.meta, ref.secret, META_CS)
        try:
            return await client.call("cs_register", timeout=30.0, **fields)
        finally:
            await client.aclose()

    return trio.run(run)


def _spreads_planned(cluster) -> int:
    return (cluster.local.dir / "meta" / "log").read_text().count("why=spread")


def test_a_zone_name_is_checked(tmp_path):
    cluster = Cluster(tmp_path, chunkservers=1, replicas=1)
    try:
        cluster.up()
        with pytest.raises(DfsError) as refused:
            register(cluster.ref, addr="127.0.0.1:1", capacity=1, used=0, chunks=[],
                     zone="rack a")
        assert refused.value.errno == errno.EINVAL and "zone" in refused.value.message
        with pytest.raises(DfsError) as refused:
            add_server(cluster, "127.0.0.1:0", zone="x" * 65)
        assert "exited at start" in refused.value.message
        assert "zone" in (cluster.local.dir / "cs2" / "log").read_text()
        assert len(status(cluster.ref)["chunkservers"]) == 1
        # Empty (as an unset DFS_ZONE in the systemd unit gives): the host.
        added = add_server(cluster, "127.0.0.2:0", zone="")
        assert zones_of(cluster) == {addr_of(cluster.local, "cs1"): "127.0.0.1",
                                     added: "127.0.0.2"}
    finally:
        cluster.teardown()


def _server(csid: int, zone: str, used: int) -> ServerState:
    return ServerState(csid, f"10.0.0.{csid}:9500", zone, capacity=100, used=used,
                       last_seen=time.monotonic())


def test_placement_takes_a_new_zone_before_a_fuller_disk_and_trimming_keeps_zones():
    registry = Registry(heartbeat_timeout=600)
    for server in (_server(1, "a", 10), _server(2, "a", 20), _server(3, "b", 80),
                   _server(4, "c", 90)):
        registry.servers[server.csid] = server
    # Most free first, but never a second copy in a zone while another has room.
    assert [s.csid for s in registry.place(3, 5)] == [1, 3, 4]
    # A copy for a chunk held in zone a goes to b, the emptier of the others.
    assert [s.csid for s in registry.place(1, 5, exclude={1}, holders={1})] == [3]
    # Only zone a has room: two copies there rather than none.
    assert [s.csid for s in registry.place(2, 15, holders={3})] == [1, 2]
    # Of four copies keep one per zone (the emptiest disk of zone a), then the rest.
    assert registry.keep([4, 2, 3, 1], 3) == [1, 3, 4]
    assert registry.keep([1, 2, 4], 2) == [1, 4]
