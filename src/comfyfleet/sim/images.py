"""Tiny deterministic images built by hand (valid PNG, JPEG-looking previews), no PIL."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
JPEG_FORMAT = 1
MAX_STORED_BLOCK = 0xFFFF


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_bytes(seed: str, size: int = 8) -> bytes:
    """A valid `size`x`size` RGB PNG whose pixels are derived from `seed`."""
    digest = hashlib.sha256(seed.encode()).digest()
    row_len = size * 3
    # pixel byte k is digest[k % len(digest)]: the digest repeated, cut into filtered rows
    pixels = digest * (size * row_len // len(digest) + 1)
    rows = b"".join(b"\x00" + pixels[y * row_len:(y + 1) * row_len] for y in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib_stored(rows)) + _chunk(b"IEND", b""))


def zlib_stored(data: bytes) -> bytes:
    """A zlib stream holding `data` in stored (uncompressed) deflate blocks.

    The pixels are hash bytes, which deflate cannot shrink, and setting up a compressor for
    each image cost more than the rest of the PNG: any zlib reader inflates this stream."""
    blocks = [b"\x78\x01"]  # deflate, 32 KiB window; (0x78 * 256 + 0x01) % 31 == 0
    starts = range(0, len(data), MAX_STORED_BLOCK) if data else [0]
    for start in starts:
        block = data[start:start + MAX_STORED_BLOCK]
        final = 1 if start + MAX_STORED_BLOCK >= len(data) else 0
        blocks.append(struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF) + block)
    blocks.append(struct.pack(">I", zlib.adler32(data)))
    return b"".join(blocks)


def jpeg_bytes(seed: str) -> bytes:
    """JPEG-looking bytes (SOI, JFIF APP0, a comment, EOI): enough for preview consumers."""
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    comment = hashlib.sha256(seed.encode()).hexdigest().encode()
    com = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
    return b"\xff\xd8" + app0 + com + b"\xff\xd9"


def preview_frame(image: bytes) -> bytes:
    """Binary WS frame type 1: u32 event, u32 format (1 = JPEG), image bytes."""
    return struct.pack(">II", PREVIEW_IMAGE, JPEG_FORMAT) + image


def preview_frame_with_metadata(image: bytes, metadata: dict) -> bytes:
    """Binary WS frame type 4: u32 event, u32 metadata length, metadata JSON, image bytes."""
    meta = json.dumps(metadata).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image
