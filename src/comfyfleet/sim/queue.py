"""In-memory queue, running slot and history, as ComfyUI's PromptQueue (execution.py:1077-1189)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
from dataclasses import dataclass

MAXIMUM_HISTORY_SIZE = 10000
SENSITIVE_EXTRA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


@dataclass
class QueueItem:
    number: int | float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs: list[str]

    @property
    def client_id(self) -> str | None:
        return self.extra_data.get("client_id")

    def as_list(self) -> list:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class PromptQueue:
    """Pending heap + one running item + history dict; `idle` is set when both are empty.

    A history entry is kept as its JSON text: it never changes once written, and thousands of
    entries held as nested dicts and lists made every full garbage-collector pass walk them.
    """

    def __init__(self) -> None:
        self.counter = 0
        self.history: dict[str, str] = {}  # prompt_id -> JSON text of the entry
        self.running: QueueItem | None = None
        self._pending: list[tuple[int | float, int, QueueItem]] = []
        self._seq = itertools.count()
        self._has_pending = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    def reset(self) -> None:
        """Forget everything (a restart); wakes anyone waiting for idle first."""
        self.idle.set()
        self.__init__()

    def remaining(self) -> int:
        return len(self._pending) + (1 if self.running else 0)

    def next_number(self, front: bool) -> int:
        number = -self.counter if front else self.counter
        self.counter += 1
        return number

    def put(self, item: QueueItem) -> None:
        heapq.heappush(self._pending, (item.number, next(self._seq), item))
        self.idle.clear()
        self._has_pending.set()

    async def take(self) -> QueueItem:
        """Wait for a pending item and move it to the running slot."""
        while not self._pending:
            self._has_pending.clear()
            await self._has_pending.wait()
        _, _, item = heapq.heappop(self._pending)
        self.running = item
        return item

    def pending_items(self) -> list[list]:
        """Heap order, not sorted — like the real `/queue`."""
        return [entry[2].as_list() for entry in self._pending]

    def delete(self, prompt_id: str) -> bool:
        for index, entry in enumerate(self._pending):
            if entry[2].prompt_id == prompt_id:
                self._pending.pop(index)
                heapq.heapify(self._pending)
                self._update_idle()
                return True
        return False

    def clear_pending(self) -> None:
        self._pending.clear()
        self._update_idle()

    def task_done(self, item: QueueItem, entry: dict) -> None:
        """Pop the running item and write its history entry in one step."""
        self.running = None
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        self.history[item.prompt_id] = json.dumps(entry)
        self._update_idle()

    def abandon_running(self) -> None:
        self.running = None
        self._update_idle()

    def get_history(self, max_items: int | None = None, offset: int = -1) -> dict[str, str]:
        """prompt_id -> JSON text of the entry, paged like the real `/history`."""
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        out: dict[str, str] = {}
        for index, (key, value) in enumerate(self.history.items()):
            if index >= offset:
                out[key] = value
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    def _update_idle(self) -> None:
        if not self._pending and self.running is None:
            self.idle.set()


def history_extra_data(extra_data: dict) -> dict:
    return {k: v for k, v in extra_data.items() if k not in SENSITIVE_EXTRA_KEYS}
