"""The ``comfyfleet`` command. Thin: it parses options into Settings, runs the matching process
or client call, prints any ComfyFleetError as one plain line and exits non-zero."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from .config import Settings, check_settings
from .errors import ComfyFleetError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="A durable job service in front of a fleet of ComfyUI servers.")

BACKEND = typer.Option(None, "--backend", help="ComfyUI URL, repeatable (name=URL to name it)")
REDIS = typer.Option(None, "--redis-url", help="Redis/Valkey URL (default: embedded Valkey)")
DATA = typer.Option(None, "--data-dir", help="Valkey data and blobs (default ./.comfyfleet)")
HOST = typer.Option(None, "--host", help="API host (default 127.0.0.1)")
PORT = typer.Option(None, "--port", help="API port (default 8787)")
PREFIX = typer.Option(None, "--key-prefix", help="Redis key prefix (default cf)")
PUBLIC = typer.Option(None, "--public-url", help="Base URL put in links (default http://host:port)")
BACKENDS_FILE = typer.Option(None, "--backends-file",
                             help=r"TOML file of \[\[backends]] (name, url, capacity, tags, headers), \[\[local]] and \[job_types.*]")
API_KEYS = typer.Option(None, "--api-keys",
                        help=r"TOML file of \[\[keys]] (owner, role, sha256); without it the API takes no key")


def settings_from(**options: Any) -> Settings:
    given = {k: v for k, v in options.items() if v not in (None, [], ())}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        message = str(first.get("msg")).removeprefix("Value error, ")
        raise ComfyFleetError(f"invalid {where}: {message}") from exc
    except SettingsError as exc:  # a COMFYFLEET_* variable that is not the JSON its setting needs
        raise ComfyFleetError(f"{exc} (check the COMFYFLEET_* environment variables)") from exc


def checked_settings(**options: Any) -> Settings:
    """``settings_from`` plus what can be checked before starting anything (config.check_settings),
    before the heavy imports of the process that would start."""
    settings = settings_from(**options)
    check_settings(settings)
    return settings


def run(coro_factory) -> None:
    """Run a coroutine, turning ComfyFleetError into a plain message and exit code 1."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(coro_factory())
    except ComfyFleetError as exc:
        typer.echo(f"comfyfleet: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def serve(backend: Optional[list[str]] = BACKEND, workers: Optional[int] = typer.Option(None, help="worker processes (default 1)"),
          redis_url: Optional[str] = REDIS, data_dir: Optional[Path] = DATA, host: Optional[str] = HOST,
          port: Optional[int] = PORT, key_prefix: Optional[str] = PREFIX,
          public_url: Optional[str] = PUBLIC, backends_file: Optional[Path] = BACKENDS_FILE,
          api_keys: Optional[Path] = API_KEYS) -> None:
    """Run the API and supervised worker processes (embedded Valkey unless --redis-url)."""
    def go():
        settings = checked_settings(backends=backend, workers=workers, redis_url=redis_url,
                                    data_dir=data_dir, host=host, port=port, key_prefix=key_prefix,
                                    public_base_url=public_url, backends_file=backends_file,
                                    api_keys_file=api_keys)
        # imported only now: bad options fail before the heavy imports of the process
        from .launch import run_serve

        return run_serve(settings)
    run(go)


@app.command()
def api(redis_url: Optional[str] = REDIS, data_dir: Optional[Path] = DATA, host: Optional[str] = HOST,
        port: Optional[int] = PORT, key_prefix: Optional[str] = PREFIX,
        public_url: Optional[str] = PUBLIC, api_keys: Optional[Path] = API_KEYS) -> None:
    """Run the API only (as many as needed, all sharing one Redis)."""
    def go():
        settings = checked_settings(redis_url=redis_url, data_dir=data_dir, host=host, port=port,
                                    key_prefix=key_prefix, public_base_url=public_url,
                                    api_keys_file=api_keys)
        from .launch import run_api

        return run_api(settings)
    run(go)


@app.command()
def worker(backend: Optional[list[str]] = BACKEND, redis_url: Optional[str] = REDIS,
           data_dir: Optional[Path] = DATA, key_prefix: Optional[str] = PREFIX,
           concurrency: Optional[int] = typer.Option(None, help="jobs tracked at once (default 64)"),
           backends_file: Optional[Path] = BACKENDS_FILE) -> None:
    """Run one worker process against a shared Redis."""
    def go():
        settings = checked_settings(backends=backend, redis_url=redis_url, data_dir=data_dir,
                                    key_prefix=key_prefix, concurrency=concurrency,
                                    backends_file=backends_file)
        from .launch import run_worker

        return run_worker(settings)
    run(go)


@app.command()
def cleanup(redis_url: Optional[str] = REDIS, data_dir: Optional[Path] = DATA,
            key_prefix: Optional[str] = PREFIX,
            retention_s: Optional[float] = typer.Option(None, "--retention-s", help="keep finished jobs this long (default 7 days)"),
            dry_run: bool = typer.Option(False, "--dry-run", help="report only, delete nothing"),
            as_json: bool = typer.Option(False, "--json", help="print the report as JSON")) -> None:
    """Delete finished jobs past retention with their blobs; repair indexes; requeue lost entries."""
    def go():
        settings = checked_settings(redis_url=redis_url, data_dir=data_dir, key_prefix=key_prefix,
                                    retention_s=retention_s)
        from .operations import run_cleanup

        return run_cleanup(settings, dry_run=dry_run, as_json=as_json)
    run(go)


@app.command()
def recover(backend: Optional[list[str]] = BACKEND, redis_url: Optional[str] = REDIS,
            data_dir: Optional[Path] = DATA, key_prefix: Optional[str] = PREFIX,
            dry_run: bool = typer.Option(False, "--dry-run", help="show what a reconcile would do"),
            as_json: bool = typer.Option(False, "--json", help="print the plan as JSON")) -> None:
    """Show what reconciling the active jobs with their backends would do (--dry-run)."""
    if not dry_run:
        typer.echo("comfyfleet: workers reconcile active jobs themselves (at start and every few "
                   "seconds); use --dry-run to see what they would do", err=True)
        raise typer.Exit(2)

    def go():
        settings = checked_settings(backends=backend, redis_url=redis_url, data_dir=data_dir,
                                    key_prefix=key_prefix)
        from .operations import run_recover_plan

        return run_recover_plan(settings, as_json=as_json)
    run(go)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)  # --help is the simulator's own: it lists its options
def sim(ctx: typer.Context) -> None:
    """Run a ComfyUI simulator (comfyfleet sim --help lists its options)."""
    from .sim.run import main as sim_main

    raise typer.Exit(sim_main(list(ctx.args), said_by="comfyfleet"))  # bad options: argparse's usage line, exit code 2


@app.command()
def demo(once: bool = typer.Option(False, "--once", help="run the sample jobs, then exit"),
         port: int = typer.Option(0, min=0, max=65535, help="API port (default: a free one)"),
         data_dir: Optional[Path] = typer.Option(None, help="keep data here (default ./.comfyfleet-demo)")) -> None:
    """Start Valkey, two simulated ComfyUI servers and the service; run sample jobs."""
    from .demo import run_demo

    run(lambda: run_demo(once=once, port=port, data_dir=data_dir))


@app.command()
def submit(workflow: Path = typer.Argument(..., help="API-format workflow JSON"),
           server: str = typer.Option("http://127.0.0.1:8787", "--server", envvar="COMFYFLEET_SERVER"),
           wait: bool = typer.Option(False, "--wait", help="show progress until the job ends"),
           metadata: Optional[list[str]] = typer.Option(None, "--meta", help="key=value, repeatable"),
           inputs: Optional[list[str]] = typer.Option(None, "--input",
                                                      help="NODE.INPUT=FILE: upload FILE as that input, repeatable"),
           out: Path = typer.Option(Path("outputs"), "--out", help="where --wait downloads outputs")) -> None:
    """Submit a workflow to a comfyfleet server."""
    from .client_cli import submit_workflow

    run(lambda: submit_workflow(workflow, server=server, wait=wait, metadata=metadata or [], out=out,
                                inputs=inputs or []))


@app.command()
def jobs(server: str = typer.Option("http://127.0.0.1:8787", "--server", envvar="COMFYFLEET_SERVER"),
         status: Optional[str] = typer.Option(None, help="comma-separated statuses"),
         limit: int = typer.Option(20, min=1, max=100),
         as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List recent jobs."""
    from .client_cli import list_jobs

    run(lambda: list_jobs(server=server, status=status, limit=limit, as_json=as_json))


@app.command()
def cancel(job_id: str, server: str = typer.Option("http://127.0.0.1:8787", "--server",
                                                   envvar="COMFYFLEET_SERVER")) -> None:
    """Cancel a job (queued: at once; running: interrupted on its backend)."""
    from .client_cli import cancel_job

    if not job_id.strip():
        raise typer.BadParameter("the job id is empty", param_hint="'JOB_ID'")

    run(lambda: cancel_job(job_id, server=server))


@app.command()
def backends(server: str = typer.Option("http://127.0.0.1:8787", "--server", envvar="COMFYFLEET_SERVER"),
             add: Optional[list[str]] = typer.Option(None, "--add", help="URL or name=URL to add, repeatable"),
             capacity: Optional[int] = typer.Option(None, min=1, max=1000,
                                                    help="capacity of backends added by --add (default 1)"),
             tag: Optional[list[str]] = typer.Option(None, "--tag", help="tag of backends added by --add"),
             drain: Optional[list[str]] = typer.Option(None, "--drain", help="finish current work, take no new"),
             disable: Optional[list[str]] = typer.Option(None, "--disable", help="take no work"),
             enable: Optional[list[str]] = typer.Option(None, "--enable", help="take work again"),
             remove: Optional[list[str]] = typer.Option(None, "--remove", help="remove; its work fails over"),
             as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the fleet's backends with state, load and breaker; add, drain, disable or remove some."""
    from .backends_cli import manage_backends

    if not add and (capacity is not None or tag):  # they would change nothing
        raise typer.BadParameter("--capacity and --tag set what --add adds; give --add URL "
                                 "(or name=URL) with them", param_hint="'--capacity' / '--tag'")
    run(lambda: manage_backends(server=server, add=add or [], capacity=capacity or 1, tags=tag or [],
                                drain=drain or [], disable=disable or [], enable=enable or [],
                                remove=remove or [], as_json=as_json))


@app.command("new-key")
def new_api_key(owner: str = typer.Option(..., "--owner", help="whose jobs the key submits and sees"),
                role: str = typer.Option("user", "--role", help="user or admin (every job, the fleet, metrics)"),
                max_active: Optional[int] = typer.Option(None, "--max-active",
                                                         help="at most this many of its jobs queued or running"),
                file: Optional[Path] = typer.Option(None, "--file", help="append the entry to this keys file")) -> None:
    """Make an API key for the --api-keys file: print it once, and its entry (the file holds only its hash)."""
    from .apikeys import key_entry, load_keys, new_key

    def go():
        key = new_key()
        entry = key_entry(key, owner, role, max_active=max_active)
        if file is None:
            typer.echo(f"{entry}\n# the key (shown once; the file holds only its hash):\n{key}")
            return
        if file.exists():
            load_keys(file)  # never append to a file that is already broken
        try:
            with file.open("a", encoding="utf-8") as fh:
                fh.write(("\n" if file.stat().st_size else "") + entry)
        except OSError as exc:
            raise ComfyFleetError(f"cannot write the keys file {file}: {exc.strerror or exc}") from None
        typer.echo(f"added a key for {owner} ({role}) to {file}; the key (shown once):\n{key}")

    try:
        go()
    except ComfyFleetError as exc:
        typer.echo(f"comfyfleet: {exc}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    app(prog_name="comfyfleet")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
