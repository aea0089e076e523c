"""How gunicorn runs the backend (``litesam-backend serve`` passes ``-c python:backend.gunicorn_config``): the
worker class that keeps ``/health`` off the request threads, and the server hooks of multiprocess metrics.

**Health lane.** gunicorn's gthread worker hands every request to one pool of ``--threads`` threads, first
come first served: during a burst of clicks a ``GET /health`` waits behind all of them (seconds for 50 clicks,
while Label Studio gives it 1 s). :class:`HealthLaneWorker` waits for a connection's first bytes on its poller
instead of on a pool thread, peeks at the request line, and hands ``GET /health`` and ``GET /`` to a pool of
:data:`HEALTH_THREADS` threads of their own; everything else goes to the request threads as before. Requests
on kept-alive connections are routed the same way. With TLS (not used by ``serve``) the request line cannot be
peeked at and every request takes the request threads. The worker uses gthread's internals of the pinned
gunicorn release (``tests/test_backend_health_lane.py`` checks it behaviourally).

**Metrics.** ``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before gunicorn starts (see
:mod:`backend.metrics`); :func:`child_exit` drops a dead worker's live gauges and :func:`on_exit` removes a
directory ``serve`` made. prometheus-client is imported only inside the hooks: the master records no metrics.
"""

from __future__ import annotations

import errno
import os
import selectors
import shutil
import socket
import time
from concurrent import futures
from functools import partial

from gunicorn.workers.gthread import DEFAULT_WORKER_DATA_TIMEOUT, TConn, ThreadWorker

#: Threads of a worker that serve only ``GET /health`` and ``GET /``.
HEALTH_THREADS = 2
#: Request lines the health lane takes (the start of the bytes a client sends).
HEALTH_REQUEST_LINES = (b"GET /health ", b"GET /health?", b"GET / ")
_PEEK_BYTES = max(len(line) for line in HEALTH_REQUEST_LINES)
#: Set by ``serve`` when it made the metrics directory itself (then removed at exit).
OWNED_METRICS_DIR_ENV = "LITESAM_OWNED_METRICS_DIR"


class HealthLaneWorker(ThreadWorker):
    """gthread worker whose health checks never wait behind other requests (see the module docstring)."""

    def init_process(self) -> None:
        self.health_pool = futures.ThreadPoolExecutor(HEALTH_THREADS, thread_name_prefix="health")
        super().init_process()

    def accept(self, listener) -> None:
        """Accept a connection and wait for its first bytes on the poller, not on a pool thread."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return  # none waiting, or the client gave up before we accepted
            raise
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())
        # As long as gthread lets a new connection send its request: a pool thread's wait, then the poller's.
        conn.timeout = time.monotonic() + DEFAULT_WORKER_DATA_TIMEOUT + self.cfg.keepalive
        self.pending_conns.append(conn)
        readable = partial(self.on_pending_socket_readable, conn)
        self.poller.register(client_sock, selectors.EVENT_READ, readable)

    def enqueue_req(self, conn: TConn) -> None:
        if not self._asks_for_health(conn):
            super().enqueue_req(conn)
            return
        done = self.health_pool.submit(self.handle, conn)
        done.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def _asks_for_health(self, conn: TConn) -> bool:
        """Whether the next request on ``conn`` starts with a health check's request line."""
        if conn.is_http2 or self.cfg.is_ssl:
            return False
        head = conn.parser.unreader.buf.getvalue() if conn.parser is not None else b""
        if not head:
            try:
                head = conn.sock.recv(_PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except OSError:
                return False
        return head.startswith(HEALTH_REQUEST_LINES)

    def handle_quit(self, sig, frame) -> None:
        self.health_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)


worker_class = f"{__name__}.{HealthLaneWorker.__name__}"


def child_exit(server, worker) -> None:
    """gunicorn hook: a worker exited; its live gauges (embedding bytes in memory) stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """gunicorn hook: the server stops; remove the metrics directory if ``serve`` made it."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.environ.get(OWNED_METRICS_DIR_ENV) == directory:
        shutil.rmtree(directory, ignore_errors=True)
