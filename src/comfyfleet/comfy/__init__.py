"""The ComfyUI edge: HTTP client, WebSocket messages and socket, prompt tracking.

Every httpx/websockets error is translated here into the ``BackendError`` tree.
"""
