"""The HTTP side port: `GET /metrics` (Prometheus) and `GET /health` for HTTP-only balancers.

`/health` mirrors the gRPC health state: 200 while SERVING, 503 otherwise (starting, draining).
Runs in a daemon thread, like prometheus_client's own exporter, so a busy event loop never
delays a scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class HealthState:
    """A thread-safe SERVING flag shared by the gRPC server and the HTTP endpoint."""

    def __init__(self) -> None:
        self._serving = threading.Event()

    def set_serving(self, serving: bool) -> None:
        """Marks the process as serving (True) or not (False)."""
        if serving:
            self._serving.set()
        else:
            self._serving.clear()

    @property
    def serving(self) -> bool:
        """Whether the process currently serves requests."""
        return self._serving.is_set()


class HttpEndpoint:
    """A started HTTP server; `port` is the bound port. Call `close()` to stop it."""

    def __init__(
        self, registry: CollectorRegistry, health: HealthState, host: str, port: int
    ) -> None:
        metrics_app = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/health":
                ok = health.serving
                start_response(
                    "200 OK" if ok else "503 Service Unavailable",
                    [("Content-Type", "text/plain; charset=utf-8")],
                )
                return [b"SERVING\n" if ok else b"NOT_SERVING\n"]
            if path == "/metrics":
                return metrics_app(environ, start_response)  # type: ignore[no-any-return]
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: try /metrics or /health\n"]

        self._server = make_server(
            host, port, app, _ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="http-endpoint", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stops serving and releases the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
