"""The simulator's hand-built images: a valid PNG whose pixels come from the seed."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest

from comfyfleet.sim.images import png_bytes, zlib_stored


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    found, at = [], 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at:at + 4])
        kind, data = png[at + 4:at + 8], png[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", png[at + 8 + length:at + 12 + length])
        assert crc == zlib.crc32(kind + data)
        found.append((kind, data))
        at += 12 + length
    return found


@pytest.mark.parametrize(("seed", "size"), [("p-1/2", 8), ("abc", 5), ("x", 13), ("", 1)])
def test_png_pixels_are_the_seed_digest_byte_by_byte(seed, size):
    chunks = _chunks(png_bytes(seed, size))
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert chunks[0][1] == struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    digest = hashlib.sha256(seed.encode()).digest()
    expected = b"".join(b"\x00" + bytes(digest[(y * size * 3 + i) % len(digest)] for i in range(size * 3))
                        for y in range(size))
    assert zlib.decompress(chunks[1][1]) == expected


def test_png_depends_on_the_seed():
    assert png_bytes("a") != png_bytes("b") and png_bytes("a") == png_bytes("a")


@pytest.mark.parametrize("size", [0, 1, 200, 0xFFFF, 0xFFFF + 1, 3 * 0xFFFF + 7])
def test_stored_zlib_stream_inflates_to_the_data(size):
    data = bytes(i % 251 for i in range(size))
    stream = zlib_stored(data)
    assert zlib.decompress(stream) == data
    inflater = zlib.decompressobj()
    assert inflater.decompress(stream) == data and inflater.eof and inflater.unused_data == b""
