"""The HTTP layer under the REST API: uvicorn (ASGI, HTTP/1.1 parsed by h11) in a background
thread, on a socket bound up front, with the guards uvicorn leaves to a proxy in front of it.

uvicorn brings a real listen backlog, keep-alive timeouts, flow control and a header size limit.
What it does not do, and `GuardedH11Protocol` adds: a deadline for a request's headers (a client
sending them a byte a second is cut off, not kept forever), a cap on open connections, and JSON
errors (`{"error": …}`, as TF Serving answers) where uvicorn would answer in plain text.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class HttpLimits:
    """What one client, or many, can hold of the REST server.

    max_request_bytes: largest body (413 beyond, refused before it is read).
    max_inflight_bytes: bodies being read or decoded at once, in bytes; a request waits for
        room (503 after `queue_timeout`), so concurrent large bodies cannot exhaust memory.
    max_head_bytes: request line plus headers (414 for a longer URL, 431 for longer headers).
    header_timeout: seconds a client has to send a request's headers (408 after).
    body_timeout: seconds a client has to send its body once the headers are in (408 after).
    keep_alive_timeout: seconds an idle kept-alive connection stays open.
    queue_timeout: seconds a request waits for room in `max_inflight_bytes` (503 after).
    max_connections: open connections; one more is answered 503 and closed.
    workers: threads decoding JSON and running the models.
    backlog: connections the kernel queues before `accept` (the old server had 5).
    """

    max_request_bytes: int = 16 * 1024 * 1024
    max_inflight_bytes: int = 32 * 1024 * 1024
    max_head_bytes: int = 16 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    queue_timeout: float = 30.0
    max_connections: int = 1024
    workers: int = 8
    backlog: int = 2048

    def __post_init__(self):
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.max_inflight_bytes < self.max_request_bytes:
            raise ValueError(f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least "
                             f"max_request_bytes ({self.max_request_bytes})")


def error_bytes(status: int, message: str, close: bool = True) -> bytes:
    """A whole HTTP/1.1 response carrying TF Serving's `{"error": …}` body."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            + ("connection: close\r\n" if close else "") + "\r\n")
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, a connection cap and JSON errors.

    The deadline runs from the moment a connection can send a request (accepted, or its
    previous response sent) until h11 has parsed the request's headers."""

    limits: HttpLimits = HttpLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.limits.max_connections:
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE,
                         f"the server has {self.limits.max_connections} connections open "
                         "already; retry later")
            return
        self._await_headers()

    def _await_headers(self) -> None:
        self._head_bytes, self._line_done = 0, False
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout,
                                                  self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._head_bytes:
            self._refuse(HTTPStatus.REQUEST_TIMEOUT,
                         f"request headers not received within {self.limits.header_timeout} s")
        else:  # an idle connection: nothing to answer
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._head_bytes += len(data)
            self._line_done = self._line_done or b"\n" in data
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """h11 refused the request: say why, in JSON."""
        limit = self.limits.max_head_bytes
        if self._head_bytes > limit and not self._line_done:
            self._refuse(HTTPStatus.REQUEST_URI_TOO_LONG,
                         f"the request line (URL) is longer than {limit} bytes")
        elif self._head_bytes > limit:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                         f"the request headers are longer than {limit} bytes")
        else:
            self._refuse(HTTPStatus.BAD_REQUEST, f"{msg.rstrip('.')}: not valid HTTP/1.1")

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        """Answers outside h11's state machine (which cannot answer before a request has been
        parsed) and closes the connection."""
        self._cancel_header_timer()
        if not self.transport.is_closing():
            self.transport.write(error_bytes(status, message))
            self.transport.close()


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket, so a port in use fails here, at start-up, with a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY on accepted sockets only if it is, and
    # without it a response's head and body (two writes) wait ~40 ms on the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen for REST on {host}:{port} ({error.strerror}); pick "
                      "another --rest-port or stop what is using it") from error
    sock.set_inheritable(True)
    return sock


class HttpServer:
    """An ASGI app served by uvicorn in a daemon thread, on `bind`'s socket."""

    def __init__(self, app, host: str, port: int, limits: HttpLimits):
        self.socket = bind(host, port, limits.backlog)
        self.port = self.socket.getsockname()[1]
        protocol = type("Protocol", (GuardedH11Protocol,), {"limits": limits})
        config = uvicorn.Config(app, http=protocol, lifespan="off", access_log=False,
                                log_level="warning", backlog=limits.backlog,
                                timeout_keep_alive=limits.keep_alive_timeout,
                                h11_max_incomplete_event_size=limits.max_head_bytes,
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]},
                                        name="rest", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the REST server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()
