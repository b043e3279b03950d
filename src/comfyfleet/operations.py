"""One-shot operator commands: ``comfyfleet cleanup`` and ``comfyfleet recover --dry-run``.

Both connect to the deployment's Redis (or adopt/start the embedded Valkey of ``--data-dir``),
do their work once and print a plain report.
"""

from __future__ import annotations

import json

from .config import Settings
from .launch import maintenance_for, redis_for, service_config
from .runtime.recovery import Recovery
from .services import open_services
from .store.claims import Claims


async def run_cleanup(settings: Settings, *, dry_run: bool, as_json: bool) -> None:
    async with redis_for(settings) as url, open_services(service_config(settings, url)) as services:
        report = await maintenance_for(services, settings).run_once(dry_run=dry_run)
    if as_json:
        print(json.dumps({"dry_run": report.dry_run, "jobs_deleted": report.jobs_deleted,
                          "index_entries_repaired": report.index_entries_repaired,
                          "blobs_deleted": report.blobs_deleted, "bytes_freed": report.bytes_freed,
                          "requeued": report.requeued,
                          "workflow_breakers_forgotten": report.workflow_breakers_forgotten,
                          "node_sets_deleted": report.node_sets_deleted,
                          "expired": report.expired}, indent=2))
    else:
        print(report.summary())


async def run_recover_plan(settings: Settings, *, as_json: bool) -> None:
    async with redis_for(settings) as url, open_services(service_config(settings, url)) as services:
        recovery = Recovery(store=services.store,
                            claims=Claims(services.redis, services.keys, lease_s=settings.lease_s),
                            dispatcher=services.dispatcher, clock=services.clock)
        steps = await recovery.plan()
    if as_json:
        print(json.dumps([s.to_dict() for s in steps], indent=2))
        return
    if not steps:
        print("no active jobs: nothing to reconcile")
        return
    print(f"{'job':36}  {'status':9}  {'phase':11}  {'backend':12}  {'beat age':>8}  "
          f"{'backend says':20}  action")
    for s in steps:
        age = "-" if s.heartbeat_age_s is None else f"{s.heartbeat_age_s:.0f}s"
        print(f"{s.job_id:36}  {s.status:9}  {(s.phase or '-'):11}  {(s.backend or '-'):12}  "
              f"{age:>8}  {s.backend_says:20}  {s.action}")
