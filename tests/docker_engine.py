"""A private Docker engine for the image test: Debian's ``dockerd`` on its own data root and socket, a base
image made here with ``debootstrap`` + ``docker import``, and a wheelhouse served to ``--network=host`` builds.

The engine runs as ``dockerd --storage-driver=overlay2 --iptables=false --ip6tables=false --bridge=none``: no
bridge, no firewall rules, so containers use the host's network (``--network=host``) and are reached on
127.0.0.1. Container registries are not reachable here, so nothing is pulled: the base image is a Debian 12
minbase with Debian's Python 3.11 in a venv on PATH (what ``python:3.11-slim`` offers the Dockerfile: ``python``
and ``pip``), imported under :data:`BASE_IMAGE`.

The data root lives in :data:`CACHE` and is kept between runs, so a second run finds the base image and the
build's layers; every run works without it (a data root the engine refuses is wiped and made again). One run
at a time uses it (a lock file).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.e2e.processes import ManagedProcess

CACHE = Path(os.environ.get("LITESAM_DOCKER_CACHE", Path.home() / ".cache" / "litesam-docker-test"))
BASE_IMAGE = "litesam-test-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
#: The wheelhouse's port when free: its URL is a build argument, so the same URL lets the build reuse its layers.
WHEELHOUSE_PORT = 38917
#: Where Debian keeps a machine's own CA certificates (a TLS-inspecting proxy's): handed to the build.
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")


class EngineUnavailable(RuntimeError):
    """No Docker engine can run here; the message says why."""


class DockerEngine:
    """One ``dockerd`` with its data root under ``root`` and its socket, exec root and log under ``run_dir``."""

    def __init__(self, root: Path, run_dir: Path) -> None:
        self.root = root
        self.run_dir = run_dir
        self.host = f"unix://{run_dir}/docker.sock"
        self.process: ManagedProcess | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 90) -> None:
        """Start ``dockerd`` and wait until it answers; a data root it cannot use is wiped and tried once more.

        Raises:
            EngineUnavailable: not root, no ``dockerd``, no overlay filesystem, or the engine did not come up.
        """
        if os.geteuid() != 0:
            raise EngineUnavailable("dockerd needs root; this test runs as uid %d" % os.geteuid())
        if shutil.which("dockerd") is None or shutil.which("docker") is None:
            raise EngineUnavailable("dockerd or docker not found: install Debian's docker.io (scripts/system-deps.sh)")
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise EngineUnavailable("the kernel offers no overlay filesystem (storage driver overlay2)")
        try:
            self._start_once(timeout)
        except EngineUnavailable as first:
            self.stop()
            _remove_tree(self.root / "data")
            try:
                self._start_once(timeout)
            except EngineUnavailable as second:
                raise EngineUnavailable(f"{second}\n(first try, on the kept data root: {first})") from None

    def _start_once(self, timeout: float) -> None:
        argv = [
            "dockerd",
            "--storage-driver=overlay2",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.run_dir / 'exec'}",
            f"--pidfile={self.run_dir / 'dockerd.pid'}",
            f"--host={self.host}",
            "--containerd-namespace=litesam-test",
            "--containerd-plugins-namespace=litesam-test-plugins",
        ]
        self.process = ManagedProcess(
            "dockerd", argv, env={"PATH": os.environ.get("PATH", os.defpath)}, cwd=self.run_dir,
            log_path=self.run_dir / "dockerd.log",
        )
        self.process.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.is_running():
                raise EngineUnavailable(f"dockerd exited at start:\n{self.process.log_tail()}")
            if self.docker("version", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.5)
        raise EngineUnavailable(f"dockerd did not answer within {timeout:.0f} s:\n{self.process.log_tail()}")

    def stop(self) -> None:
        """Stop ``dockerd`` by its PID (SIGTERM; SIGKILL after 60 s); it stops its containers and containerd."""
        if self.process is not None:
            self.process.stop(timeout=60)
            self.process = None

    # ----------------------------------------------------------------------------------------- commands
    def docker(
        self, *args: str, check: bool = True, timeout: float = 120, input: bytes | None = None
    ) -> subprocess.CompletedProcess:
        """Run ``docker ARGS`` against this engine; output captured as text (``input`` fed to stdin)."""
        completed = subprocess.run(
            ["docker", "--host", self.host, *args], input=input, capture_output=True, timeout=timeout,
            env={**os.environ, "DOCKER_CONFIG": str(self.run_dir / "docker-config")},
        )
        completed.stdout, completed.stderr = (
            completed.stdout.decode(errors="replace"), completed.stderr.decode(errors="replace")
        )
        if check and completed.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])} … failed ({completed.returncode}):\n"
                                 f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
        return completed

    def has_image(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0


@contextlib.contextmanager
def running_engine() -> Iterator[DockerEngine]:
    """A started :class:`DockerEngine` on the cached data root (one user at a time), stopped afterwards."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # A short path: the engine's sockets live under the exec root, and socket paths are short.
        run_dir = Path(tempfile.mkdtemp(prefix="lsd-", dir="/tmp"))
        engine = DockerEngine(CACHE, run_dir)
        try:
            engine.start()
            yield engine
        finally:
            engine.stop()
            _remove_tree(run_dir)  # the engine leaves its netns mount in the exec root


def ensure_base_image(engine: DockerEngine, work: Path) -> bool:
    """Make :data:`BASE_IMAGE` unless the engine has it: ``debootstrap`` a Debian 12 minbase with python3,
    python3-venv and ca-certificates, a venv at /opt/python on PATH, ``docker import``. Returns True if made."""
    if engine.has_image(BASE_IMAGE):
        return False
    if shutil.which("debootstrap") is None:
        raise EngineUnavailable("debootstrap not found: install Debian's debootstrap (scripts/system-deps.sh)")
    rootfs = work / "rootfs"
    try:
        _run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
              "bookworm", str(rootfs), DEBIAN_MIRROR], timeout=600)
        _run(["chroot", str(rootfs), "python3", "-m", "venv", "/opt/python"], timeout=120)
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--one-file-system", "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "--host", engine.host, "import",
             "--change", "ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python"]', "-", BASE_IMAGE],
            stdin=tar.stdout, capture_output=True, timeout=300,
        )
        tar.stdout.close()
        assert tar.wait(timeout=60) == 0 and imported.returncode == 0, imported.stderr.decode(errors="replace")
    finally:
        _remove_tree(rootfs)
    return True


@contextlib.contextmanager
def served_wheelhouse(directory: Path) -> Iterator[str]:
    """``directory`` holding torch 2.13.0 (taken by this machine's pip from wherever its configuration finds
    it, ``pip download``), served as a directory listing on 127.0.0.1 (port :data:`WHEELHOUSE_PORT` when
    free); yields its URL."""
    directory.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "torch==2.13.0", "-d", str(directory)],
         timeout=600)
    handler = functools.partial(_QuietFileHandler, directory=str(directory))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEELHOUSE_PORT), handler)
    except OSError:  # taken: any port serves, only the build's layer cache misses
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def local_ca_certificates() -> str:
    """The PEM text of this machine's own CA certificates (``/usr/local/share/ca-certificates``), or ''."""
    return "".join(path.read_text() for path in sorted(LOCAL_CA_DIR.glob("*.crt")))


class _QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _run(argv: Sequence[str], timeout: float) -> None:
    completed = subprocess.run(argv, capture_output=True, timeout=timeout)
    if completed.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({completed.returncode}):\n"
                             f"{completed.stdout.decode(errors='replace')[-2000:]}\n"
                             f"{completed.stderr.decode(errors='replace')[-2000:]}")


def _remove_tree(path: Path) -> None:
    """Remove ``path``, unmounting what is mounted below it first (debootstrap's /proc, an engine's layers)."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mountpoint in sorted((m for m in mounts if m.startswith(prefix) or m == prefix[:-1]), reverse=True):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, timeout=30)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True, timeout=600)
