"""Subprocess helpers for end-to-end tests: free ports, managed server processes, bounded readiness checks.

Every wait in this module is bounded by an explicit timeout. A server process is started in its own session
(process group), so ``stop()`` can signal the whole tree: SIGTERM first, SIGKILL after a timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx


class ProcessError(RuntimeError):
    """A managed process failed to start, exited early, or did not become ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (bind to port 0, read it, close).

    The port can be taken by someone else before the caller binds it; callers that care verify the port the
    server actually listens on (see ``ManagedProcess.wait_log``).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Variables a child may inherit from the caller's environment; base_env() drops everything else.
INHERITED_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
)


def base_env(home: str | os.PathLike, **extra: str) -> dict[str, str]:
    """A minimal, hermetic environment for a child process: only ``INHERITED_ENV`` from ``os.environ``, plus
    ``HOME`` and ``XDG_{DATA,CACHE,CONFIG}_HOME`` under ``home`` (so nothing reads or writes the real
    ``~/.local/share`` or ``~/.cache``), ``PYTHONUNBUFFERED=1`` (log lines arrive promptly), and ``extra``.
    """
    home = Path(home)
    env = {key: os.environ[key] for key in INHERITED_ENV if key in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / "xdg-data"),
        XDG_CACHE_HOME=str(home / "xdg-cache"),
        XDG_CONFIG_HOME=str(home / "xdg-config"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class ManagedProcess:
    """One server process started for a test, with its stdout and stderr going to one log file.

    ``argv`` is run with exactly ``env`` (nothing of ``os.environ`` is inherited unless the caller put it
    there) in ``cwd``. When the program forks its real master process (gunicorn), pass ``pidfile`` (the path
    given to the program's ``--pid`` option); ``pid`` then reads the master's PID from it, and ``stop()`` also
    signals that process and its group.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike],
        *,
        env: Mapping[str, str],
        cwd: str | os.PathLike,
        log_path: str | os.PathLike,
        pidfile: str | os.PathLike | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.env = dict(env)
        self.cwd = Path(cwd)
        self.log_path = Path(log_path)
        self.pidfile = Path(pidfile) if pidfile is not None else None
        self.popen: subprocess.Popen | None = None
        self.started_at: float | None = None
        self._log_offset = 0  # log bytes written before this start (the log file is appended to)

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self) -> ManagedProcess:
        """Start the process (once). Returns ``self``."""
        if self.popen is not None:
            raise ProcessError(f"{self.name}: already started (pid {self.popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.pidfile is not None:
            with contextlib.suppress(FileNotFoundError):
                self.pidfile.unlink()
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self.started_at = time.monotonic()
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() signals the whole tree
            )
        return self

    @property
    def pid(self) -> int:
        """PID of the server's master: read from ``pidfile`` when given and present, else the started PID."""
        if self.popen is None:
            raise ProcessError(f"{self.name}: not started")
        master = self._pidfile_pid()
        return master if master is not None else self.popen.pid

    def _pidfile_pid(self) -> int | None:
        if self.pidfile is None:
            return None
        try:
            text = self.pidfile.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def is_running(self) -> bool:
        """True while the started process (or, with a pidfile, the master it names) is alive."""
        if self.popen is None:
            return False
        if self.popen.poll() is None:
            return True
        master = self._pidfile_pid()
        return master is not None and _pid_alive(master)

    def elapsed(self) -> float:
        """Seconds since ``start()``."""
        if self.started_at is None:
            raise ProcessError(f"{self.name}: not started")
        return time.monotonic() - self.started_at

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process group (and the pidfile master's group), wait up to ``timeout`` s, then SIGKILL.

        Returns the started process's exit code (None if it was never started). Safe to call twice.
        """
        if self.popen is None:
            return None
        groups = self._process_groups()
        for pgid in groups:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None and not any(_group_alive(g) for g in groups):
                break
            time.sleep(0.1)
        else:
            for pgid in groups:
                _signal_group(pgid, signal.SIGKILL)
        try:
            return self.popen.wait(timeout=5.0)
        except subprocess.TimeoutExpired as exc:
            raise ProcessError(
                f"{self.name}: pid {self.popen.pid} survived SIGKILL\n{self.log_tail()}"
            ) from exc

    def _process_groups(self) -> list[int]:
        if self.popen is None:
            return []
        groups = [self.popen.pid]  # start_new_session=True: the group id is the started PID
        master = self._pidfile_pid()
        if master is not None and master != self.popen.pid:
            with contextlib.suppress(ProcessLookupError):
                pgid = os.getpgid(master)
                if pgid not in groups and pgid != os.getpgid(0):
                    groups.append(pgid)
        return groups

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------- waiting
    def wait_http(
        self,
        url: str,
        timeout: float = 60.0,
        *,
        ready: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
        interval: float = 0.25,
    ) -> float:
        """Poll ``GET url`` until ``ready(response)`` is true; return the seconds since ``start()``.

        Raises ``ProcessError`` (with the log tail) if the process exits first or ``timeout`` s pass.
        """
        deadline = time.monotonic() + timeout
        last = "no attempt"
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                self._raise_if_exited(f"while waiting for {url}")
                try:
                    response = client.get(url)
                    if ready(response):
                        return self.elapsed()
                    last = f"HTTP {response.status_code}: {response.text[:200]!r}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    raise ProcessError(
                        f"{self.name}: {url} not ready after {timeout:.0f} s (last: {last})\n{self.log_tail()}"
                    )
                time.sleep(interval)

    def wait_log(self, pattern: str, timeout: float = 30.0, *, interval: float = 0.1) -> re.Match:
        """Wait until the log written since ``start()`` matches the regular expression ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text(since_start=True))
            if match:
                return match
            self._raise_if_exited(f"while waiting for log pattern {pattern!r}")
            if time.monotonic() >= deadline:
                raise ProcessError(
                    f"{self.name}: log pattern {pattern!r} not seen after {timeout:.0f} s\n{self.log_tail()}"
                )
            time.sleep(interval)

    def _raise_if_exited(self, doing: str) -> None:
        if self.popen is None:
            raise ProcessError(f"{self.name}: not started")
        code = self.popen.poll()
        if code is not None and not self.is_running():
            raise ProcessError(f"{self.name}: exited with code {code} {doing}\n{self.log_tail()}")

    # ----------------------------------------------------------------------------------------------- logs
    def log_text(self, *, since_start: bool = False) -> str:
        """The log so far (decoded leniently); with ``since_start`` only what this run of the process wrote."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return (data[self._log_offset :] if since_start else data).decode("utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the log, framed with the process name, for assertion messages."""
        tail = self.log_text().splitlines()[-lines:]
        body = "\n".join(tail) if tail else "(empty log)"
        return (
            f"----- {self.name} log tail ({self.log_path}) -----\n{body}\n----- end of {self.name} log -----"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in group ``pgid``.

    Zombies are ignored: an orphaned child that already exited may wait for a reaper that a container's PID 1
    never runs. Without /proc, any member that can still be signalled counts.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        # Format: "pid (comm) state ppid pgrp ..."; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
