"""ComfyUI's save names, `{prefix}_{counter:05}_.png` with counter = highest on disk + 1,
without listing the folder for every save.

ComfyUI lists the output folder on each save, which costs O(files). `SaveNames` lists a
folder once per prefix and then keeps the highest counter, trusting it while the folder's
mtime is the one seen after its own last write. Another writer (another simulator sharing the
folder, a test adding files) changes the mtime and forces a new listing. Where the kernel
stamps coarsely (no fine-grained timestamps), a writer that slips in within the same tick goes
unseen unless it took the very name about to be used: that name is checked before each save,
so an existing file is never overwritten.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

MAX_PREFIXES_PER_FOLDER = 1000  # temp previews use one prefix per prompt


@dataclass
class _Folder:
    mtime_ns: int
    highest: dict[str, int] = field(default_factory=dict)  # prefix -> highest counter on disk


class SaveNames:
    def __init__(self) -> None:
        self._folders: dict[str, _Folder] = {}

    def next_name(self, folder: str, prefix: str) -> str:
        """The name ComfyUI would save the next `prefix` image under in `folder`."""
        name = os.path.basename(prefix)
        state = self._current(folder)
        highest = state.highest.get(name)
        if highest is None or os.path.lexists(os.path.join(folder, _filename(name, highest + 1))):
            highest = highest_on_disk(folder, name)
            if len(state.highest) >= MAX_PREFIXES_PER_FOLDER:
                state.highest.clear()
            state.highest[name] = highest
        return _filename(name, highest + 1)

    def saved(self, folder: str, prefix: str, filename: str) -> None:
        """`filename` (from `next_name`) is now written: count it and note the folder's new mtime."""
        state = self._folders.get(folder)
        match = _pattern(os.path.basename(prefix)).match(filename)
        if state is None or match is None:
            return
        state.highest[os.path.basename(prefix)] = int(match.group(1))
        state.mtime_ns = os.stat(folder).st_mtime_ns

    def _current(self, folder: str) -> _Folder:
        mtime_ns = os.stat(folder).st_mtime_ns
        state = self._folders.get(folder)
        if state is None or state.mtime_ns != mtime_ns:
            state = self._folders[folder] = _Folder(mtime_ns)
        return state


def highest_on_disk(folder: str, name: str) -> int:
    """The highest counter of `name` among the folder's files (0 when none), as ComfyUI finds it."""
    pattern = _pattern(name)
    highest = 0
    for entry in os.listdir(folder):
        match = pattern.match(entry)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(re.escape(name) + r"_(\d{5,})_")


def _filename(name: str, counter: int) -> str:
    return f"{name}_{counter:05}_.png"
