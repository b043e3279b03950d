"""`/view` answers like aiohttp's FileResponse: headers, ranges, conditional requests, sizes."""

from __future__ import annotations

import gzip
import os

from comfyfleet.sim.files import SMALL_FILE_BYTES

COMPARED_HEADERS = ("content-type", "content-length", "etag", "last-modified", "accept-ranges",
                    "content-encoding")


def _put(sim, name: str, data: bytes) -> os.stat_result:
    path = os.path.join(sim.output_dir, name)
    with open(path, "wb") as fh:
        fh.write(data)
    return os.stat(path)


async def test_small_file_has_the_file_response_headers(sim, http):
    """A plain GET and one that FileResponse must answer itself (an If-Modified-Since in the
    past still gets the whole file) carry the same headers and body."""
    st = _put(sim, "small.png", b"\x89PNG-not-really")
    plain = await http.get("/view", params={"filename": "small.png"})
    via_file_response = await http.get("/view", params={"filename": "small.png"},
                                       headers={"If-Modified-Since": "Thu, 01 Jan 1970 00:00:01 GMT"})
    assert plain.status_code == via_file_response.status_code == 200
    assert plain.content == via_file_response.content == b"\x89PNG-not-really"
    assert ({h: plain.headers.get(h) for h in COMPARED_HEADERS}
            == {h: via_file_response.headers.get(h) for h in COMPARED_HEADERS})
    assert plain.headers["etag"] == f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    assert plain.headers["content-type"] == "image/png" and plain.headers["accept-ranges"] == "bytes"


async def test_ranges_and_conditional_requests(sim, http):
    _put(sim, "r.bin", bytes(range(10)))
    params = {"filename": "r.bin"}
    part = await http.get("/view", params=params, headers={"Range": "bytes=2-5"})
    assert part.status_code == 206 and part.content == bytes([2, 3, 4, 5])
    assert part.headers["content-range"] == "bytes 2-5/10"
    etag = (await http.get("/view", params=params)).headers["etag"]
    assert (await http.get("/view", params=params, headers={"If-None-Match": etag})).status_code == 304
    assert (await http.get("/view", params=params, headers={"If-Match": '"other"'})).status_code == 412
    assert (await http.get("/view", params=params, headers={"Range": "bytes=20-"})).status_code == 416


async def test_precompressed_sibling_is_sent_to_clients_that_accept_it(sim, http):
    _put(sim, "t.txt", b"plain text")
    _put(sim, "t.txt.gz", gzip.compress(b"from the gz file"))
    accepted = await http.get("/view", params={"filename": "t.txt"}, headers={"Accept-Encoding": "gzip"})
    assert accepted.headers["content-encoding"] == "gzip" and accepted.content == b"from the gz file"
    refused = await http.get("/view", params={"filename": "t.txt"}, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in refused.headers and refused.content == b"plain text"


async def test_files_of_any_size(sim, http):
    for size in (0, SMALL_FILE_BYTES, SMALL_FILE_BYTES + 1, 3 * SMALL_FILE_BYTES):
        data = os.urandom(size)
        _put(sim, f"f{size}.bin", data)
        r = await http.get("/view", params={"filename": f"f{size}.bin"})
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-length"] == str(size) and r.headers["accept-ranges"] == "bytes"
        assert r.headers["content-type"] == "application/octet-stream"
