"""``comfyfleet demo``: everything on one machine in one process, with sample jobs.

Starts an embedded Valkey, two simulated ComfyUI servers, the API and a worker; submits sample
workflows through the public API, shows their live progress from the SSE streams, and prints
where each output was stored. With ``once`` it exits when the jobs have ended.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from .client_cli import follow_all, say
from .config import Settings
from .errors import ComfyFleetError
from .launch import (
    build_app,
    build_worker,
    check_port_free,
    free_port,
    service_config,
    start_api,
    start_embedded,
    until_signalled,
)
from .services import open_services
from .sim import SimConfig, Simulator
from .sim.images import png_bytes
from .store.embedded import EmbeddedValkey


def sample_workflow(seed: int, steps: int, prompt: str) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal",
                                                   "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0],
                                                   "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "demo", "images": ["8", 0]}},
    }


DEFAULT_DATA_DIR = Path(".comfyfleet-demo")  # kept after exit, so the printed paths stay valid

SAMPLES = [
    ("a lighthouse at dusk", 20, "image"),
    ("a red fox in snow", 12, "image"),
    ("portrait, studio light", 16, "edit"),
]


async def run_demo(*, once: bool, port: int = 0, data_dir: Path | None = None) -> None:
    data_dir = (data_dir or DEFAULT_DATA_DIR).resolve()
    check_port_free("127.0.0.1", port)
    valkey = EmbeddedValkey(data_dir)
    redis_url = await start_embedded(valkey, data_dir)
    try:
        await _run(once=once, port=port, data_dir=data_dir, redis_url=redis_url)
    finally:
        await asyncio.to_thread(valkey.stop)


async def _run(*, once: bool, port: int, data_dir: Path, redis_url: str) -> None:
    async with Simulator(SimConfig(step_s=0.05, name="gpu-a"), port=0) as sim_a, \
            Simulator(SimConfig(step_s=0.05, name="gpu-b"), port=0) as sim_b:
        port = port or free_port("127.0.0.1")
        base = f"http://127.0.0.1:{port}"
        settings = Settings(redis_url=redis_url, data_dir=data_dir, port=port, public_base_url=base,
                            backends=[f"gpu-a={sim_a.url}", f"gpu-b={sim_b.url}"],
                            progress_throttle_s=0.2)
        async with open_services(service_config(settings, redis_url)) as services:
            api = await start_api(build_app(services, settings), "127.0.0.1", port)
            worker = build_worker(services, settings)
            await worker.start()
            try:
                say(f"comfyfleet demo: API on {base}, ComfyUI simulators {sim_a.url} {sim_b.url}", soft_wrap=True)
                jobs = await _submit_samples(base)
                await _show_progress(base, jobs)
                await _print_outputs(base, jobs, services)
                if not once:
                    say(f"API running on {base}, dashboard at {base}/dashboard (Ctrl-C to stop)")
                    await until_signalled()
            finally:
                await worker.stop()
                await api.stop()


def edit_workflow(seed: int, steps: int, prompt: str, source: dict[str, Any]) -> dict[str, Any]:
    """The sample workflow turned into an image edit: it starts from an uploaded image."""
    workflow = sample_workflow(seed, steps, prompt)
    workflow["10"] = {"class_type": "LoadImage", "inputs": {"image": source}}
    workflow["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    workflow["3"]["inputs"].update(latent_image=["11", 0], denoise=0.6)
    del workflow["5"]
    return workflow


async def _upload_source(client: httpx.AsyncClient) -> dict[str, Any]:
    """An input image, uploaded once; the reference a workflow input takes."""
    files = {"file": ("portrait.png", png_bytes("demo-portrait", size=32), "image/png")}
    response = await client.post("/api/v2/assets", files=files)
    if response.status_code not in (200, 201):
        raise ComfyFleetError(f"demo upload failed: HTTP {response.status_code} {response.text[:200]}")
    asset = response.json()
    say(f"uploaded portrait.png as input asset {asset['id']} ({asset['hash'][:20]}…)", soft_wrap=True)
    return {"__type": "core/ASSET", "info": {"id": asset["id"]}}


async def _submit_samples(base: str) -> list[str]:
    ids = []
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as client:
        for seed, (prompt, steps, job_type) in enumerate(SAMPLES, start=1):
            workflow = (edit_workflow(seed, steps, prompt, await _upload_source(client)) if job_type == "edit"
                        else sample_workflow(seed, steps, prompt))
            body = {"workflow": workflow,
                    "metadata": {"type": job_type, "user_id": "demo", "prompt": prompt}}
            response = await client.post("/api/v2/jobs", json=body)
            if response.status_code != 201:
                raise ComfyFleetError(f"demo submit failed: HTTP {response.status_code} {response.text[:200]}")
            ids.append(response.json()["id"])
    return ids


async def _show_progress(base: str, jobs: list[str]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(60.0, connect=5.0)) as client:
        async with asyncio.timeout(120):
            await follow_all(client, jobs)


async def _print_outputs(base: str, jobs: list[str], services) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as client:
        for job_id in jobs:
            job = (await client.get(f"/api/v2/jobs/{job_id}")).json()
            say(f"job {job_id} {job['status']} on {job.get('backend') or '-'}", soft_wrap=True)
            if job["status"] != "succeeded":
                raise ComfyFleetError(f"demo job {job_id} ended {job['status']}: {job.get('error')}")
            blob_of = {o.id: o.hash for o in (await services.store.get(job_id)).outputs}  # where it lies
            for output in job["outputs"]:
                say(f"  {output['name']} ({output['size_bytes']} bytes) stored at "
                    f"{services.blobs.path(blob_of[output['id']])}\n    download: {output['url']}", soft_wrap=True)
