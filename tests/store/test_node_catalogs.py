"""Node catalogs in Redis: alike backends share one stored list, a backend's removal drops its
catalog, and the lists no backend names any more go with housekeeping (atomically with writers:
a catalog and its list are written in one step, and only for a backend still registered at the
url that was read)."""

from __future__ import annotations

from comfyfleet.store.fleet import BackendRecord, FleetStore
from comfyfleet.store.node_catalogs import NodeCatalogs

CORE = frozenset({"EmptyImage", "KSampler", "SaveImage"})
CUSTOM = CORE | {"CustomUpscale"}


def url_of(name: str) -> str:
    return f"http://127.0.0.1:{8000 + ord(name[-1])}"


async def registered(redis, keys, *names: str) -> None:  # type: ignore[no-untyped-def]
    await FleetStore(redis, keys).seed([BackendRecord(name=n, url=url_of(n)) for n in names])


async def test_alike_backends_share_a_list_and_unused_lists_go(redis, keys):
    await registered(redis, keys, "a", "b", "c")
    catalogs = NodeCatalogs(redis, keys)
    a = await catalogs.record("a", url_of("a"), CORE, read_at=100.0)
    b = await catalogs.record("b", url_of("b"), CORE, read_at=101.0)
    c = await catalogs.record("c", url_of("c"), CUSTOM, read_at=102.0)
    assert a.digest == b.digest != c.digest and c.count == 4
    assert await redis.hlen(keys.fleet_node_sets) == 2
    fresh = NodeCatalogs(redis, keys)  # another process: reads what was stored
    known = await fresh.catalogs()
    assert sorted(known) == ["a", "b", "c"] and known["b"].read_at == 101.0
    assert await fresh.classes(known["c"]) == CUSTOM

    await catalogs.record("c", url_of("c"), CORE, read_at=200.0)  # c lost its custom node
    assert await catalogs.forget_unused_sets() == 1
    assert await redis.hkeys(keys.fleet_node_sets) == [a.digest]
    assert await catalogs.forget_unused_sets() == 0


async def test_removing_a_backend_drops_its_catalog(redis, keys):
    fleet = FleetStore(redis, keys)
    await fleet.add(BackendRecord(name="gpu-1", url="http://127.0.0.1:1"))
    catalogs = NodeCatalogs(redis, keys)
    await catalogs.record("gpu-1", "http://127.0.0.1:1", CORE, read_at=1.0)
    await fleet.remove("gpu-1")
    assert await redis.hgetall(keys.fleet_nodes) == {}
    assert await catalogs.forget_unused_sets() == 1


async def test_a_catalog_of_a_backend_moved_or_removed_meanwhile_is_not_stored(redis, keys):
    fleet = FleetStore(redis, keys)
    await fleet.add(BackendRecord(name="gpu-1", url="http://127.0.0.1:1"))
    catalogs = NodeCatalogs(redis, keys)
    await fleet.update("gpu-1", url="http://127.0.0.1:2")
    assert await catalogs.record("gpu-1", "http://127.0.0.1:1", CUSTOM, read_at=1.0) is None
    assert await catalogs.record("ghost", "http://127.0.0.1:3", CUSTOM, read_at=1.0) is None
    assert await redis.hgetall(keys.fleet_nodes) == {} and await redis.hgetall(keys.fleet_node_sets) == {}
    assert await catalogs.record("gpu-1", "http://127.0.0.1:2", CORE, read_at=2.0) is not None
    assert list(await NodeCatalogs(redis, keys).catalogs()) == ["gpu-1"]
