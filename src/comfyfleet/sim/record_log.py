"""`RecordLog`: one JSON line per prompt start and end, appended to a file shared by processes."""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields

from .config import PromptRecord

_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT
_RECORD_FIELDS = tuple(f.name for f in fields(PromptRecord))


class RecordLog:
    """Appends each line with one `write()` on a descriptor kept open (O_APPEND).

    A line is in the file, visible to readers, as soon as `write` returns, and it survives
    SIGKILL: nothing is buffered in the process. O_APPEND keeps whole lines from several
    servers or processes writing the same file. If the file is deleted while open, the next
    line recreates it at the same path.
    """

    def __init__(self, path: str | None, server_name: str) -> None:
        self._path = path
        self._server_name = server_name
        self._fd: int | None = None

    def write(self, event: str, record: PromptRecord) -> None:
        if self._path is None:
            return
        line = {"event": event, "server": self._server_name, "pid": os.getpid(), "t": time.time()}
        for name in _RECORD_FIELDS:  # not vars(record): that would give every kept record a dict
            line[name] = getattr(record, name)
        data = (json.dumps(line) + "\n").encode()
        fd = self._open_fd()
        os.write(fd, data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open_fd(self) -> int:
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
            self.close()  # deleted under us: append to a new file at the path, as before
        if self._fd is None:
            self._fd = os.open(self._path, _APPEND_FLAGS, 0o666)
        return self._fd
