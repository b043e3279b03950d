"""Choose a backend for a job attempt."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..comfy.client import ComfyClient
from ..domain.job import Job


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    url: str
    capacity: int = 1
    tags: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Backend:
    config: BackendConfig
    client: ComfyClient

    @property
    def name(self) -> str:
        return self.config.name


class Dispatcher:
    """Round-robin over the configured backends, preferring one other than the last that failed."""

    def __init__(self, backends: list[Backend]) -> None:
        self._backends = list(backends)
        self._next = 0

    @property
    def backends(self) -> list[Backend]:
        return list(self._backends)

    def by_name(self, name: str) -> Backend | None:
        return next((b for b in self._backends if b.name == name), None)

    def choose(self, job: Job) -> Backend | None:
        if not self._backends:
            return None
        avoid = job.history[-1].backend if job.history else None
        for _ in range(len(self._backends)):
            backend = self._backends[self._next % len(self._backends)]
            self._next += 1
            if backend.name != avoid or len(self._backends) == 1:
                return backend
        return self._backends[0]
