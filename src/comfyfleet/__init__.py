"""comfyfleet: a durable job service in front of a fleet of ComfyUI servers.

Layering (dependencies point inward):

    cli, api            entry points; the only readers of the environment
    runtime             worker, runner, dispatcher, recovery, supervisor
    store, queue, comfy adapters: Redis/Valkey, bullmq, ComfyUI HTTP + WebSocket
    ports               the protocols the runtime talks to
    domain              pure: job record, transitions, progress, failures, policies
"""

__version__ = "0.1.0"
