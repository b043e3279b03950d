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
    servers or processes writing the same file. Like opening the path for each line, a line
    always goes to the file now at the path: one deleted, moved or replaced is let go.
    """

    def __init__(self, path: str | None, server_name: str) -> None:
        self._path = path
        self._server_name = server_name
        self._fd: int | None = None
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file

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
            self._fd = self._file_id = None

    def _open_fd(self) -> int:
        if self._fd is not None and _file_id_at(self._path) != self._file_id:
            self.close()
        if self._fd is None:
            self._fd = os.open(self._path, _APPEND_FLAGS, 0o666)
            st = os.fstat(self._fd)
            self._file_id = (st.st_dev, st.st_ino)
        return self._fd


def _file_id_at(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)
