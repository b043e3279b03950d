"""An asset's content is served with the content type it was stored with, as given."""

from __future__ import annotations

import pytest

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.transport import open_session
from comfyfleet.runtime.outputs import collect_outputs


@pytest.mark.parametrize("content_type", ["text/csv", "text/plain", "text/html"])
async def test_a_text_asset_gets_no_charset_it_was_not_given(client, content_type):
    """A latin-1 CSV uploaded as text/csv is not declared UTF-8 on the way out."""
    data = "naïve;café\n".encode("latin-1")
    asset = await client.post("/api/v2/assets", files={"file": ("t.csv", data, content_type)},
                              data={"content_type": content_type})
    assert asset.status_code == 201, asset.text
    content = await client.get(f"/api/v2/assets/{asset.json()['id']}/content")
    assert content.content == data and content.headers["content-type"] == content_type


async def test_a_text_output_is_served_as_the_utf8_it_was_stored_as(client, blobs, make_finished_job):
    """A node's text output is kept as UTF-8 and says so when it is served."""
    http = open_session(limit=1)
    try:  # text outputs come in the history entry itself: the backend is never asked
        [output] = await collect_outputs(ComfyClient("http://127.0.0.1:9", http=http), blobs, job_id="j",
                                         outputs={"5": {"text": ["naïve café"]}})
    finally:
        await http.close()
    job = await make_finished_job([("naïve café".encode(), output.content_type, output.name)])
    content = await client.get(f"/api/v2/assets/{job.outputs[0].id}/content")
    assert content.headers["content-type"] == "text/plain; charset=utf-8" and content.text == "naïve café"
