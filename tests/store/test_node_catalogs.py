"""Node catalogs in Redis: alike backends share one stored list, a backend's removal drops its
catalog, and the lists no backend names any more go with housekeeping (atomically with writers:
a catalog and its list are written in one transaction)."""

from __future__ import annotations

from comfyfleet.store.fleet import BackendRecord, FleetStore
from comfyfleet.store.node_catalogs import NodeCatalogs

CORE = frozenset({"EmptyImage", "KSampler", "SaveImage"})
CUSTOM = CORE | {"CustomUpscale"}


async def test_alike_backends_share_a_list_and_unused_lists_go(redis, keys):
    catalogs = NodeCatalogs(redis, keys)
    a = await catalogs.record("a", CORE, read_at=100.0)
    b = await catalogs.record("b", CORE, read_at=101.0)
    c = await catalogs.record("c", CUSTOM, read_at=102.0)
    assert a.digest == b.digest != c.digest and c.count == 4
    assert await redis.hlen(keys.fleet_node_sets) == 2
    fresh = NodeCatalogs(redis, keys)  # another process: reads what was stored
    known = await fresh.catalogs()
    assert sorted(known) == ["a", "b", "c"] and known["b"].read_at == 101.0
    assert await fresh.classes(known["c"]) == CUSTOM

    await catalogs.record("c", CORE, read_at=200.0)  # c lost its custom node
    assert await catalogs.forget_unused_sets() == 1
    assert await redis.hkeys(keys.fleet_node_sets) == [a.digest]
    assert await catalogs.forget_unused_sets() == 0


async def test_removing_a_backend_drops_its_catalog(redis, keys):
    fleet = FleetStore(redis, keys)
    await fleet.add(BackendRecord(name="gpu-1", url="http://127.0.0.1:1"))
    catalogs = NodeCatalogs(redis, keys)
    await catalogs.record("gpu-1", CORE, read_at=1.0)
    await fleet.remove("gpu-1")
    assert await redis.hgetall(keys.fleet_nodes) == {}
    assert await catalogs.forget_unused_sets() == 1
