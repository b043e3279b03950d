"""The Lua scripts of ``store/scripts/``, read from the installed package."""

from __future__ import annotations

from importlib import resources


def script(name: str) -> str:
    return resources.files(__package__).joinpath("scripts", name).read_text(encoding="utf-8")
