"""The event bus outlives a foreign message on its channel: subscribers go on getting events."""

from __future__ import annotations

import asyncio
import json


async def test_a_message_with_an_odd_job_id_leaves_the_bus_delivering(event_bus, redis, keys):
    """A message whose job_id is no string (another program on the channel) is skipped; it
    ended the one listener of the process, and every subscriber waited for good."""
    async with event_bus.subscription("job-1") as events, event_bus.subscription(None) as everything:
        for odd in ({"job_id": ["job-1"], "kind": "status"}, {"job_id": {"a": 1}}, {"job_id": None}, [1]):
            await redis.publish(keys.events_channel, json.dumps(odd))
        await event_bus.publish("job-1", "progress", {"value": 0.5})
        async with asyncio.timeout(5):
            mine, seen = await anext(events), await anext(everything)
    assert mine == seen == {"job_id": "job-1", "kind": "progress", "value": 0.5}
