"""What is printed or logged of a secret-bearing value."""

from __future__ import annotations

import re


def without_password(url: str) -> str:
    """``url`` with its password replaced by ``***``; read off the text itself, so a URL too
    malformed to parse does not show its password either."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    authority = re.match(r"[^/?#]*", rest).group()  # type: ignore[union-attr]
    credentials, at, address = authority.rpartition("@")
    user, colon, _password = credentials.partition(":")
    if not at or not colon:
        return url
    return f"{scheme}://{user}:***@{address}{rest[len(authority):]}"
