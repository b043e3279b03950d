"""`/view` answers: small files from one read in the event loop, anything else by FileResponse.

aiohttp's FileResponse stats and opens the file in the thread pool and sends it with sendfile:
right for large files, but for the small images the simulator writes, the thread hand-offs cost
more than the file. `file_response` reads such a file directly and answers with exactly the
headers FileResponse would send (ETag, Last-Modified, Accept-Ranges, Content-Length). Requests
that FileResponse treats specially (ranges, conditional headers, a pre-compressed sibling the
client accepts) still go to FileResponse.
"""

from __future__ import annotations

import os
import stat

from aiohttp import hdrs, web

SMALL_FILE_BYTES = 256 * 1024
# Headers that make FileResponse answer 206, 304, 412 or 416 instead of the whole file.
SPECIAL_REQUEST_HEADERS = (hdrs.RANGE, hdrs.IF_RANGE, hdrs.IF_MATCH, hdrs.IF_NONE_MATCH,
                           hdrs.IF_MODIFIED_SINCE, hdrs.IF_UNMODIFIED_SINCE)
# FileResponse sends `name.br` / `name.gz` instead of `name` when they exist and are accepted.
PRECOMPRESSED_SUFFIXES = ((".br", "br"), (".gz", "gzip"))


def file_response(request: web.BaseRequest, path: str, content_type: str) -> web.StreamResponse:
    """The response FileResponse would give for `path`, read in the event loop when small."""
    response = _small_file_response(request, path, content_type)
    if response is None:
        return web.FileResponse(path, headers={hdrs.CONTENT_TYPE: content_type})
    return response


def _small_file_response(request: web.BaseRequest, path: str, content_type: str) -> web.Response | None:
    headers = request.headers
    if any(name in headers for name in SPECIAL_REQUEST_HEADERS):
        return None
    accept_encoding = headers.get(hdrs.ACCEPT_ENCODING, "").lower()
    if any(encoding in accept_encoding and os.path.lexists(path + suffix)
           for suffix, encoding in PRECOMPRESSED_SUFFIXES):
        return None
    read = _read_small_file(path)
    if read is None:
        return None
    data, st = read
    response = web.Response(body=data, headers={hdrs.CONTENT_TYPE: content_type})
    response.etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
    response.last_modified = st.st_mtime
    response.headers[hdrs.ACCEPT_RANGES] = "bytes"
    return response


def _read_small_file(path: str) -> tuple[bytes, os.stat_result] | None:
    """(content, stat) of a regular file of at most SMALL_FILE_BYTES; None otherwise or on error."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > SMALL_FILE_BYTES:
            return None
        chunks, remaining = [], st.st_size
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks), st
    except OSError:
        return None
    finally:
        os.close(fd)
