"""Every ``comfyfleet`` command, run as a user runs it, answers bad input with a plain message.

The commands and their options are read from the typer app (and the simulator's argparse parser),
so a new command gets the generic cases at once: an unknown option, a missing argument, a word
where a number goes. Cases for the meaning of a value (a Redis URL nothing listens on, a backends
file that is not TOML, a ``--server`` that is not comfyfleet, ...) are keyed by option name and
run on every command that has that option. A few more run against a real ``comfyfleet api``
(real Valkey) and then check that none of them changed its data.

Each case runs ``python -m comfyfleet ...`` in a subprocess (all of them at once, on a thread
pool) and must end with a non-zero exit code, no traceback, and a message naming the problem:
one ``comfyfleet: ...`` line on stderr (exit 1) or a usage error (exit 2). A case that runs for
TIMEOUT_S fails as a hang. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
import typing
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import typer
from helpers.fleet import free_port

from comfyfleet.cli import app
from comfyfleet.sim.run import build_parser

TIMEOUT_S = 60.0

# -- what the CLI has ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    options: dict[str, type]  # long flag -> scalar type of its value (bool: a flag without one)
    arguments: tuple[str, ...]  # required positional arguments, by name


def _scalar(hint: typing.Any) -> type:
    """``Optional[list[int]]`` -> int; ``Path`` -> Path."""
    while typing.get_origin(hint) in (typing.Union, types.UnionType, list):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _sim_options(parser: argparse.ArgumentParser) -> dict[str, type]:
    options = {}
    for action in parser._actions:  # the simulator's own parser: the only list of its options
        flags = [f for f in action.option_strings if f.startswith("--")]
        if not flags or isinstance(action, argparse._HelpAction):
            continue
        options[flags[0]] = bool if action.nargs == 0 else (action.type or str)
    return options


def cli_commands() -> list[Command]:
    group = typer.main.get_command(app)
    callbacks = {info.name or info.callback.__name__.replace("_", "-"): info.callback
                 for info in app.registered_commands}
    commands = []
    for name, command in group.commands.items():
        hints = typing.get_type_hints(callbacks[name])
        options: dict[str, type] = {}
        arguments = []
        for param in command.params:
            if param.param_type_name == "argument":
                if param.required:
                    arguments.append(param.name)
                continue
            flag = next(f for f in param.opts if f.startswith("--"))
            options[flag] = bool if param.is_flag else _scalar(hints[param.name])
        if command.context_settings.get("ignore_unknown_options"):  # `sim`: options of its own parser
            options.update(_sim_options(build_parser()))
        commands.append(Command(name, options, tuple(arguments)))
    return commands


COMMANDS = cli_commands()

# -- the cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]  # each must be in the message
    code: int | None = 1  # 1: comfyfleet's message; 2: a usage error; None: either
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Bad:
    label: str
    value: tuple[str, ...]  # the option's value, then any options the case needs besides
    expect: tuple[str, ...]
    code: int | None = 1
    everywhere: bool = False  # on every command with the option, not only the first (ANY)


def bad(label: str, value: str | tuple[str, ...], *expect: str, code: int | None = 1) -> Bad:
    return Bad(label, (value,) if isinstance(value, str) else value, expect, code)


def everywhere(case: Bad) -> Bad:
    return replace(case, everywhere=True)


BAD_BACKEND_URLS = [
    bad("ftp", "ftp://127.0.0.1:9", "backend URL 'ftp://127.0.0.1:9'"),
    everywhere(bad("unclosed-ipv6", "http://[::1", "backend URL 'http://[::1'")),
    bad("port-not-a-number", "http://127.0.0.1:abc", "backend URL 'http://127.0.0.1:abc'"),
    bad("name-with-a-space", "a b=http://127.0.0.1:9", "name 'a b'"),
    # a host that does not encode (IDNA): aiohttp raised UnicodeError on every request to it
    bad("host-empty-label", "gpu-9=http://gpu9..lan:8188", "backend URL 'http://gpu9..lan:8188'", "empty label"),
    bad("host-label-too-long", f"http://{'a' * 64}.lan:8188", "backend URL", "label over 63 characters"),
]
EMPTY_NAME = [bad("empty", "", "take a backend name")]

# Bad values by option. Each runs on the first command that has the option; one marked
# `everywhere` (a check on a path that differs between commands) on every command that has it.
# {placeholders} are filled in when the cases run (Runs.context).
BAD_VALUES: dict[str, list[Bad]] = {
    "--redis-url": [
        bad("not-a-url", "nonsense", "Redis URL 'nonsense'"),
        bad("unclosed-ipv6", "redis://[::1", "Redis URL 'redis://[::1'"),
        bad("db-not-a-number", "redis://127.0.0.1:{closed}/abc", "Redis URL"),
        everywhere(bad("nothing-listens", "redis://127.0.0.1:{closed}/0", "127.0.0.1:{closed}")),
        everywhere(bad("never-answers", "redis://127.0.0.1:{silent}/0", "127.0.0.1:{silent}", "did not answer")),
    ],
    "--backends-file": [
        bad("missing", "{files}/missing.toml", "cannot read the backends file", "missing.toml"),
        bad("a-directory", "{files}/adir", "cannot read the backends file"),
        everywhere(bad("not-toml", "{files}/not.toml", "not valid TOML")),
        bad("not-utf8", "{files}/binary.toml", "not UTF-8"),
        bad("unclosed-ipv6-url", "{files}/ipv6.toml", "backends[0]", "http://[::1"),
        bad("unknown-key", "{files}/unknown.toml", "unknown key(s) colour"),
        bad("capacity-zero", "{files}/capacity.toml", "capacity must be"),
        bad("host-empty-label", "{files}/typo-host.toml", "backends[0]", "'http://gpu9..lan:8188'", "empty label"),
        bad("header-with-newline", "{files}/header-newline.toml", "backends[0]", "header 'Authorization'",
            "line feed"),
        bad("header-name-not-a-token", "{files}/header-name.toml", "backends[0]", "header name 'Bad Header'"),
        # TOML has inf and nan: a count of inf or nan ended serve with a traceback (int() of it)
        bad("max-attempts-inf", "{files}/attempts-inf.toml", "job_types.image: max_attempts must be a whole number"),
        bad("fallback-after-nan", "{files}/fallback-nan.toml", "job_types.image: fallback_after must be a whole number"),
        bad("backoff-nan", "{files}/backoff-nan.toml", "job_types.image: backoff_base_s must be a finite number"),
        bad("max-attempts-fraction", "{files}/attempts-fraction.toml", "max_attempts must be a whole number", "2.5"),
        bad("job-type-unknown", "{files}/job-type-typo.toml", "job_types.imgae: unknown job type 'imgae'", "image"),
        bad("job-type-empty-tag", "{files}/job-type-empty-tag.toml", "job_types.image: tags must be"),
    ],
    "--backend": BAD_BACKEND_URLS,
    "--add": BAD_BACKEND_URLS,
    "--tag": [bad("empty", ("", "--add", "http://127.0.0.1:9"), "--tag ''")],
    "--drain": EMPTY_NAME, "--disable": EMPTY_NAME, "--enable": EMPTY_NAME, "--remove": EMPTY_NAME,
    "--key-prefix": [everywhere(bad("empty", "", "key prefix ''")), bad("a-space", "a b", "key prefix 'a b'")],
    "--data-dir": [everywhere(bad("a-file", "{files}/afile", "is not a directory")),
                   bad("under-a-file", "{files}/afile/sub", "is not a directory")],
    "--port": [bad("negative", "-1", "port", code=None),
               everywhere(bad("too-big", "70000", "port", code=None)),
               everywhere(bad("in-use", "{busy}", "{busy}"))],
    "--host": [everywhere(bad("not-an-address-here", "192.0.2.1", "192.0.2.1"))],
    "--public-url": [bad("not-a-url", "notaurl", "public URL 'notaurl'")],
    "--workers": [bad("zero", "0", "workers"), bad("negative", "-1", "workers")],
    "--concurrency": [bad("zero", "0", "concurrency")],
    "--retention-s": [bad("negative", "-5", "retention_s"), bad("nan", "nan", "retention_s")],
    "--capacity": [bad("zero", "0", "--capacity", code=2)],
    "--limit": [bad("zero", "0", "--limit", code=2), bad("too-big", "101", "--limit", code=2)],
    "--server": [
        everywhere(bad("nothing-listens", "http://127.0.0.1:{closed}",
                       "cannot reach comfyfleet at http://127.0.0.1:{closed}")),
        bad("not-a-url", "notaurl", "--server 'notaurl'"),
        bad("unclosed-ipv6", "http://[::1", "--server 'http://[::1'"),
        everywhere(bad("answers-html", "{stub_html}", "comfyfleet server")),
        bad("answers-other-json", "{stub_json}", "comfyfleet server"),
    ],
    "--api-keys": [bad("missing", "{files}/missing.toml", "no such API keys file", "missing.toml"),
                   everywhere(bad("not-toml", "{files}/not.toml", "not valid TOML")),
                   bad("a-directory", "{files}/adir", "cannot read the API keys file")],
    "--owner": [bad("a-space", "a b", "owner must be"), bad("empty", "", "owner must be")],
    "--role": [bad("unknown", "boss", "role must be user or admin")],
    "--max-active": [bad("zero", "0", "max_active must be"), bad("a-word", "many", "--max-active", code=2)],
    "--file": [bad("not-toml", "{files}/not.toml", "not valid TOML"),
               bad("a-directory", "{files}/adir", "adir")],
    "--input": [bad("no-equals", "face.png", "--input takes NODE.INPUT=FILE"),
                bad("no-such-node", "99.image={files}/afile", "no node '99'"),
                bad("no-such-file", "1.image={files}/missing.png", "no such file")],
    "--meta": [bad("no-equals", "novalue", "--meta takes key=value"), bad("no-key", "=x", "--meta takes key=value")],
    "--out": [bad("a-file", ("{files}/afile", "--wait"), "--out")],
    # the simulator (`comfyfleet sim`): its argparse answers with a usage line
    "--step-s": [bad("negative", "-1", "--step-s", code=2), bad("nan", "nan", "--step-s", code=2)],
    "--history-delay-s": [bad("negative", "-1", "--history-delay-s", code=2)],
    "--time-scale": [bad("negative", "-1", "--time-scale", code=2)],
    "--model-load-s": [bad("nan", "nan", "--model-load-s", code=2)],
    "--extra-node-classes": [bad("an-empty-name", "A,,B", "expected class names separated by commas", code=2)],
    "--output-dir": [bad("a-file", "{files}/afile", "cannot start the simulator", "afile")],
}
# Options any value of which is fine here, or that only the server can judge (see LIVE_CASES).
FREE_TEXT = {"--status", "--name", "--record-file"}

# What a command gets besides the case's own option, so the case reaches its check and nothing
# starts if the check is missing: a Redis and a server that are not there, a free port.
BASE = {"--redis-url": "redis://127.0.0.1:{closed}/0", "--server": "http://127.0.0.1:{closed}",
        "--port": "0", "--data-dir": "{tmp}/data", "--owner": "alice"}
REQUIRED = {"recover": ("--dry-run",)}  # without it `recover` only says to add it
ARGUMENTS = {"workflow": "{files}/wf.json", "job_id": "some-job"}


def generic_cases(command: Command) -> Iterator[Case]:
    args = tuple(ARGUMENTS.get(a, "x") for a in command.arguments)
    yield Case(f"{command.name}-unknown-option", (command.name, *args, "--no-such-option"),
               ("--no-such-option",), code=2)
    if command.arguments:
        yield Case(f"{command.name}-missing-argument", (command.name,), ("Missing argument",), code=2)
    for flag, kind in command.options.items():
        if kind in (int, float):
            yield Case(f"{command.name}{flag}-not-a-number", (command.name, *args, flag, "abc"),
                       (flag,), code=2)


def value_cases(command: Command, first: Callable[[str], bool]) -> Iterator[Case]:
    """The bad values of ``command``'s options (``first(flag)``: no command before it has the flag)."""
    args = tuple(ARGUMENTS.get(a, "x") for a in command.arguments)
    for flag in command.options:
        for case in BAD_VALUES.get(flag, []):
            if not (first(flag) or case.everywhere):
                continue
            base = [x for other, value in BASE.items() if other in command.options and other != flag
                    for x in (other, value)]
            argv = (command.name, *args, *REQUIRED.get(command.name, ()), *base, flag, *case.value)
            yield Case(f"{command.name}{flag}-{case.label}", argv, case.expect, case.code)


WORKFLOW = '{"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64}}}'

OTHER_CASES = [
    Case("no-such-option", ("--no-such-option",), ("--no-such-option",), code=2),
    Case("no-such-command", ("nosuchcmd",), ("No such command",), code=2),
    Case("recover-without-dry-run", ("recover",), ("--dry-run",), code=2),
    Case("backends-capacity-without-add", ("backends", "--capacity", "2", "--server", "http://127.0.0.1:{closed}"),
         ("--add",), code=2),
    Case("backends-tag-without-add", ("backends", "--tag", "lora", "--drain", "gpu-1",
                                      "--server", "http://127.0.0.1:{closed}"), ("--add",), code=2),
    Case("cancel-empty-job-id", ("cancel", "", "--server", "http://127.0.0.1:{closed}"), ("job id",), code=2),
    Case("submit-missing-file", ("submit", "{files}/missing.json"), ("no such file",)),
    Case("submit-a-directory", ("submit", "{files}/adir"), ("cannot read",)),
    Case("submit-not-json", ("submit", "{files}/not.json"), ("is not JSON",)),
    Case("submit-not-utf8", ("submit", "{files}/binary.json"), ("cannot read",)),
    Case("submit-json-list", ("submit", "{files}/list.json"), ("does not hold an API-format workflow",)),
    Case("submit-json-string", ("submit", "{files}/string.json"), ("does not hold an API-format workflow",)),
    Case("env-settings-not-json", ("api", "--redis-url", "redis://127.0.0.1:{closed}/0", "--port", "0"),
         ("COMFYFLEET_",), env=(("COMFYFLEET_PROGRESS_NODE_WEIGHTS", "not json"),)),
    Case("env-port-not-a-number", ("api", "--redis-url", "redis://127.0.0.1:{closed}/0"), ("port",),
         env=(("COMFYFLEET_PORT", "abc"),)),
    Case("env-workers-zero", ("serve", "--redis-url", "redis://127.0.0.1:{closed}/0", "--port", "0"),
         ("workers",), env=(("COMFYFLEET_WORKERS", "0"),)),
    Case("env-server-not-a-url", ("jobs",), ("--server 'notaurl'",), env=(("COMFYFLEET_SERVER", "notaurl"),)),
    Case("env-backends-host-empty-label", ("api", "--redis-url", "redis://127.0.0.1:{closed}/0", "--port", "0"),
         ("backend URL 'http://gpu9..lan:8188'", "empty label"),
         env=(("COMFYFLEET_BACKENDS", "gpu-9=http://gpu9..lan:8188"),)),
    Case("worker-redis-url-is-http", ("worker", "--redis-url", "redis://127.0.0.1:{stub_html_port}/0"),
         ("PING",)),
]

# Against a real `comfyfleet api` holding one queued job ({job}) and one backend (gpu-keep);
# test_the_server_data_is_unchanged checks afterwards that none of these changed either.
LIVE_CASES = [
    Case("live-cancel-unknown-job", ("cancel", "no-such-job", "--server", "{api}"), ("HTTP 404", "no-such-job")),
    Case("live-cancel-path-traversal", ("cancel", "../backends/gpu-keep", "--server", "{api}"), ("HTTP 404",)),
    Case("live-cancel-id-with-path", ("cancel", "{job}/cancel#x", "--server", "{api}"), ("HTTP 404",)),
    Case("live-jobs-unknown-status", ("jobs", "--status", "bogus", "--server", "{api}"), ("HTTP 400", "status")),
    Case("live-submit-empty-workflow", ("submit", "{files}/empty.json", "--server", "{api}"), ("HTTP 422",)),
    Case("live-submit-bad-meta", ("submit", "{files}/wf.json", "--meta", "x", "--server", "{api}"),
         ("--meta takes key=value",)),
    Case("live-backends-drain-unknown", ("backends", "--drain", "nosuch", "--server", "{api}"), ("HTTP 404", "nosuch")),
    Case("live-backends-drain-and-enable-one", ("backends", "--drain", "gpu-keep", "--enable", "gpu-keep",
                                                "--server", "{api}"), ("--drain and --enable", "gpu-keep")),
    Case("live-backends-remove-trailing-slash", ("backends", "--remove", "gpu-keep/", "--server", "{api}"),
         ("gpu-keep",)),
    Case("live-backends-add-one-good-one-bad",
         ("backends", "--add", "http://127.0.0.1:9", "--add", "notaurl", "--server", "{api}"),
         ("backend URL 'notaurl'",)),
    Case("live-redis-db-out-of-range", ("cleanup", "--redis-url", "{valkey}/99", "--data-dir", "{tmp}/data"),
         ("PING",)),
]

def all_cases() -> list[Case]:
    cases: list[Case] = []
    seen: set[str] = set()
    for command in COMMANDS:
        cases += generic_cases(command)
        cases += value_cases(command, first=lambda flag: flag not in seen)
        seen.update(command.options)
    return cases + OTHER_CASES + LIVE_CASES


CASES = all_cases()
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"

# -- running them -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    argv: list[str]
    returncode: int | None  # None: still running after TIMEOUT_S (killed)
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (f"comfyfleet {' '.join(map(repr, self.argv))}\nexit code: {self.returncode}\n"
                f"stderr:\n{self.stderr}\nstdout:\n{self.stdout}")


def run_case(case: Case, context: dict[str, str], cwd: Path) -> Outcome:
    argv = [part.format_map(context) for part in case.argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYFLEET_")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1", **dict(case.env)})
    try:
        done = subprocess.run([sys.executable, "-m", "comfyfleet", *argv], check=False, capture_output=True,
                              text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL, cwd=cwd, env=env)
    except subprocess.TimeoutExpired as exc:
        return Outcome(argv, None, _text(exc.stdout), _text(exc.stderr))
    return Outcome(argv, done.returncode, done.stdout, done.stderr)


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def serve_http(body: bytes, content_type: str) -> http.server.ThreadingHTTPServer:
    """A server on 127.0.0.1 that answers every request 200 with ``body``: not comfyfleet."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_DELETE = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def silent_listener() -> tuple[socket.socket, threading.Thread]:
    """Accepts connections on 127.0.0.1 and never says a word (a Redis URL that hangs)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                for conn in held:
                    conn.close()
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return listener, thread


def write_files(files: Path) -> None:
    files.mkdir()
    (files / "adir").mkdir()
    (files / "afile").write_text("not a directory\n")
    (files / "wf.json").write_text(WORKFLOW)
    (files / "empty.json").write_text("{}")
    (files / "not.json").write_text('{"1": ')
    (files / "list.json").write_text("[1, 2]")
    (files / "string.json").write_text('"a workflow"')
    (files / "binary.json").write_bytes(b"\xff\xfe\x00{")
    (files / "not.toml").write_text("backends = [ not toml\n")
    (files / "binary.toml").write_bytes(b"\xff\xfe[[backends]]\n")
    (files / "ipv6.toml").write_text('[[backends]]\nurl = "http://[::1"\n')
    (files / "unknown.toml").write_text('[[backends]]\nurl = "http://127.0.0.1:9"\ncolour = "red"\n')
    (files / "capacity.toml").write_text('[[backends]]\nurl = "http://127.0.0.1:9"\ncapacity = 0\n')
    (files / "typo-host.toml").write_text('[[backends]]\nurl = "http://gpu9..lan:8188"\n')
    (files / "header-newline.toml").write_text(  # a token read from a file with its newline
        '[[backends]]\nurl = "http://127.0.0.1:9"\nheaders = { Authorization = "Bearer tok\\n" }\n')
    (files / "header-name.toml").write_text('[[backends]]\nurl = "http://127.0.0.1:9"\nheaders = { "Bad Header" = "x" }\n')
    for name, entry in (("attempts-inf", "max_attempts = inf"), ("fallback-nan", "fallback_after = nan"),
                        ("backoff-nan", "backoff_base_s = nan"), ("attempts-fraction", "max_attempts = 2.5"),
                        ("job-type-empty-tag", 'tags = [""]')):
        (files / f"{name}.toml").write_text(f"[job_types.image]\n{entry}\n")
    (files / "job-type-typo.toml").write_text("[job_types.imgae]\nmax_attempts = 2\n")  # read by no job


@dataclass
class LiveApi:
    url: str
    job_id: str


def start_api(valkey_url: str, root: Path) -> tuple[subprocess.Popen[bytes], LiveApi]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "api.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "comfyfleet", "api", "--redis-url", valkey_url,
                                "--port", str(port), "--data-dir", str(root / "api-data"),
                                "--key-prefix", f"clibad{uuid.uuid4().hex[:8]}"],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root)
    log.close()
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{url}/api/v2/jobs", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"comfyfleet api did not start:\n{(root / 'api.log').read_text()}")
        time.sleep(0.1)
    added = httpx.post(f"{url}/api/v2/backends", json={"name": "gpu-keep", "url": "http://127.0.0.1:9"})
    assert added.status_code == 201, added.text
    job = httpx.post(f"{url}/api/v2/jobs", json={"workflow": {"1": {"class_type": "EmptyImage",
                                                                    "inputs": {"width": 64}}}})
    assert job.status_code == 201, job.text
    return process, LiveApi(url, job.json()["id"])


@dataclass
class Runs:
    futures: dict[str, Future[Outcome]]
    context: dict[str, str]  # what the {placeholders} of the cases stand for
    api: LiveApi


@pytest.fixture(scope="module")
def runs(valkey_url: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Runs]:
    """Every selected case started at once on a thread pool; each test waits for its own."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if getattr(item, "callspec", None) is not None and "case" in item.callspec.params}
    root = tmp_path_factory.mktemp("cli-bad-input")
    write_files(root / "files")
    stub_html = serve_http(b"<html><body>a web page</body></html>", "text/html")
    stub_json = serve_http(b"{}", "application/json")
    silent, silent_thread = silent_listener()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    api_process, api = start_api(valkey_url, root)
    context = {"tmp": str(root), "files": str(root / "files"), "closed": str(free_port()),
               "silent": str(silent.getsockname()[1]), "busy": str(busy.getsockname()[1]),
               "stub_html": f"http://127.0.0.1:{stub_html.server_address[1]}",
               "stub_html_port": str(stub_html.server_address[1]),
               "stub_json": f"http://127.0.0.1:{stub_json.server_address[1]}",
               "api": api.url, "job": api.job_id, "valkey": valkey_url}
    pool = ThreadPoolExecutor(max_workers=8)
    try:
        futures = {case.id: pool.submit(run_case, case, context, root) for case in CASES if case.id in selected}
        yield Runs(futures, context, api)
    finally:
        for future in futures.values():
            future.cancel()
        pool.shutdown(wait=True)
        api_process.terminate()
        try:
            api_process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            api_process.kill()
            api_process.wait()
        for server in (stub_html, stub_json):
            server.shutdown()
            server.server_close()
        busy.close()
        silent.close()
        silent_thread.join(timeout=5)


def _normalized(text: str) -> str:
    """Text of a typer/rich error box or argparse usage, wrapped lines joined."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_plain_error(case: Case, runs: Runs) -> None:
    outcome = runs.futures[case.id].result()
    assert outcome.returncode is not None, f"still running after {TIMEOUT_S:.0f} s (a hang):\n{outcome}"
    assert "Traceback" not in outcome.stderr + outcome.stdout, str(outcome)
    assert outcome.returncode != 0, str(outcome)
    if case.code is not None:
        assert outcome.returncode == case.code, str(outcome)
    else:
        assert outcome.returncode in (1, 2), str(outcome)
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    if outcome.returncode == 1:
        assert len(lines) == 1 and lines[0].startswith("comfyfleet: "), f"not one plain line:\n{outcome}"
        message = lines[0]
    else:
        assert re.search(r"usage:", outcome.stderr, re.IGNORECASE) or (lines and lines[-1].startswith("comfyfleet: ")), \
            str(outcome)
        message = _normalized(outcome.stderr)
    for fragment in (f.format_map(runs.context) for f in case.expect):
        assert fragment in message, f"{fragment!r} not in the message:\n{outcome}"


def test_every_option_has_bad_values() -> None:
    """A new option gets bad-value cases here (or is listed as free text) as it is added."""
    unchecked = sorted({flag for command in COMMANDS for flag, kind in command.options.items()
                        if kind is not bool and flag not in BAD_VALUES and flag not in FREE_TEXT})
    assert not unchecked, f"options without bad-value cases in BAD_VALUES: {unchecked}"


def test_the_server_data_is_unchanged_by_the_bad_requests(runs: Runs) -> None:
    for future in runs.futures.values():
        future.result()
    job = httpx.get(f"{runs.api.url}/api/v2/jobs/{runs.api.job_id}").json()
    assert job["status"] == "queued", job
    page = httpx.get(f"{runs.api.url}/api/v2/jobs", params={"limit": 100}).json()
    assert [j["id"] for j in page["jobs"]] == [runs.api.job_id], page
    backends = httpx.get(f"{runs.api.url}/api/v2/backends").json()["backends"]
    assert [(b["name"], b["url"]) for b in backends] == [("gpu-keep", "http://127.0.0.1:9")], backends
    assert backends[0].get("admin_state", "active") == "active", backends
