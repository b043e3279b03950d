"""Redis/Valkey adapters: job records, events, keys, and the embedded server.

    keys.py        every key, documented in one table
    connection.py  connect(url) and the redis-error -> StoreError translation
    jobs.py        RedisJobStore (ports.JobStore), atomic via scripts/*.lua
    events.py      EventBus (ports.EventBus): one pub/sub subscription fanned out in-process
    embedded.py    EmbeddedValkey: a persistent local valkey-server for single-machine use
"""

from .connection import connect
from .embedded import EmbeddedValkey
from .events import EventBus
from .jobs import RedisJobStore
from .keys import Keys

__all__ = ["EmbeddedValkey", "EventBus", "Keys", "RedisJobStore", "connect"]
