"""A real nginx reverse proxy in front of a test server, with a request-body limit: what many Label Studio
deployments put in front of it (nginx answers 413 above ``client_max_body_size``, 1 MB by default)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.e2e.processes import ManagedProcess, base_env, free_port


class BodyLimitProxy:
    """nginx on 127.0.0.1:<free port> passing every request to ``upstream`` (an http URL), refusing bodies
    over ``max_body_bytes`` with 413; ``url`` is where clients connect, ``statuses(path_part)`` what it
    answered to requests whose path contains ``path_part``, in order (from its access log)."""

    def __init__(self, root: Path, upstream: str, max_body_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.access_log = self.root / "access.log"
        # As root, nginx's workers would run as "nobody", who cannot use the test's private temp folders.
        user = "user root;\n" if os.geteuid() == 0 else ""
        kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        temp = " ".join(f"{kind}_temp_path {self.root / kind};" for kind in kinds)
        conf = self.root / "nginx.conf"
        conf.write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.root / 'nginx.pid'};\n"
            f"error_log {self.root / 'error.log'} warn;\nevents {{ worker_connections 64; }}\n"
            f"http {{\n  access_log {self.access_log} combined;\n  {temp}\n"
            f"  client_max_body_size {int(max_body_bytes)};\n"
            f"  server {{\n    listen 127.0.0.1:{port};\n"
            f"    location / {{ proxy_pass {upstream}; proxy_set_header Host $http_host; "
            "proxy_read_timeout 120s; }\n  }\n}\n"
        )
        self.process = ManagedProcess(
            "nginx",
            ["nginx", "-p", self.root, "-c", conf],
            env=base_env(self.root),
            cwd=self.root,
            log_path=self.root / "nginx.log",
        )

    def start(self) -> BodyLimitProxy:
        self.process.start()
        self.process.wait_http(f"{self.url}/health", timeout=30)
        return self

    def stop(self) -> None:
        self.process.stop()

    def statuses(self, path_part: str) -> list[int]:
        """HTTP statuses of the requests whose path contains ``path_part``, from the access log."""
        found = []
        for line in self.access_log.read_text().splitlines():
            request, _, rest = line.partition('" ')  # combined format: … "POST /path HTTP/1.1" 413 …
            if path_part in request:
                found.append(int(rest.split()[0]))
        return found
