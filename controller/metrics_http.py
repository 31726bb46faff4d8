"""The ``/metrics`` HTTP server of the exporter and of ingest's metrics port, optionally
protected: a bearer token (``Authorization: Bearer <token>``, else 401) and/or TLS.

prometheus-client's own ``start_http_server`` (0.26) offers TLS and client certificates but no
HTTP authentication, and takes no WSGI app to wrap: this serves its ``make_wsgi_app`` behind a
token check with the same threading WSGI server. The TLS handshake happens in the request's
thread (bounded by :data:`HANDSHAKE_TIMEOUT_S`), so a client that connects and says nothing
cannot stall the accepting thread.
"""

from __future__ import annotations

import hmac
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from farm.logs import get_logger

log = get_logger("controller.metrics_http")

#: How long a client has to complete the TLS handshake.
HANDSHAKE_TIMEOUT_S = 10.0

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class MetricsAccess:
    """How ``/metrics`` is protected; nothing set: plain HTTP, open to whoever reaches the
    address (hence the loopback default)."""

    token_file: Path | None = None
    """A file holding the bearer token scrapers must send (its trailing newline ignored)."""
    tls_cert: Path | None = None
    """Server certificate (PEM): serve HTTPS."""
    tls_key: Path | None = None
    """Its private key (PEM)."""

    def token(self) -> str | None:
        """The token, read from :attr:`token_file`; ``ValueError`` names a file that cannot
        be read or is empty."""
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(
                f"cannot read the metrics token file {self.token_file}: {exc.strerror}"
            ) from None
        if not token:
            raise ValueError(f"the metrics token file {self.token_file} is empty")
        return token

    def tls_context(self) -> ssl.SSLContext | None:
        """The server's TLS context; ``ValueError`` names an unusable certificate or key."""
        if self.tls_cert is None and self.tls_key is None:
            return None
        if self.tls_cert is None or self.tls_key is None:
            raise ValueError("metrics TLS needs both a certificate and its key")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cannot load the metrics TLS certificate {self.tls_cert} with key "
                f"{self.tls_key}: {exc}"
            ) from None
        return context


def require_bearer(app: WsgiApp, token: str) -> WsgiApp:
    """``app`` answering 401 unless the request carries ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if hmac.compare_digest(given, expected):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
        )
        return [b"a bearer token is required\n"]

    return guarded


class _Handler(WSGIRequestHandler):
    # A client that connects and then says nothing (over TLS or not) holds its thread this
    # long at most.
    timeout = HANDSHAKE_TIMEOUT_S

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: Prometheus scrapes every 15 s."""


class _Server(ThreadingWSGIServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A failed handshake or a client gone mid-answer: one line, not a traceback on stderr.
        log.warning("metrics_request_failed", client=str(client_address[0]))


def serve(
    registry: CollectorRegistry,
    port: int,
    addr: str,
    access: MetricsAccess,
    *,
    app: WsgiApp | None = None,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` on ``addr:port`` from a daemon thread, as ``access`` says, with
    ``app`` (default: prometheus-client's for ``registry``). ``ValueError`` for unusable token
    or TLS files, ``OSError`` if the port cannot be bound."""
    app = app or make_wsgi_app(registry)
    token = access.token()
    if token is not None:
        app = require_bearer(app, token)
    context = access.tls_context()
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (_Server,), {"address_family": family})
    httpd = make_server(addr, port, app, server_class, handler_class=_Handler)
    if context is not None:
        httpd.socket = context.wrap_socket(
            httpd.socket, server_side=True, do_handshake_on_connect=False
        )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True, name="metrics-http")
    thread.start()
    return httpd, thread
