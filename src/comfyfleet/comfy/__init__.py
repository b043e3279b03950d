"""The ComfyUI edge: HTTP transport and client, WebSocket messages and socket, prompt tracking.

Every aiohttp/websockets/OS/timeout error is translated here into the ``BackendError`` tree.
"""
