"""HTTP/1.1 transport of the dev server: uvicorn (h11 parser) running a small ASGI app around `rest.Api`.

Why uvicorn + h11 instead of http.server: h11 parses request lines, headers, Content-Length and chunked framing
strictly and reports every violation as one exception, so malformed framing (negative or non-numeric
Content-Length, bad chunk sizes, HTTP/0.9 lines, unknown versions) is answered with a 400 instead of a 500,
a hang or a reply without a status line. uvicorn is the event loop around it: one asyncio task per connection,
so idle connections cost no thread, keep-alive connections time out, and headers are capped (16 KiB).

What this module adds around uvicorn:
  * every HTTP-level error is a JSON `{"error": ...}` with a 4xx status (uvicorn's own 400 is plain text);
  * an idle timeout for connections that send nothing, or stop in the middle of a request (uvicorn times out
    only idle keep-alive connections between requests);
  * a body limit (`max_request_bytes`): 413 as soon as the declared Content-Length is read, or as soon as a
    chunked body passes it; the rest is then read and dropped so the close does not reset the connection;
  * HTTP/1.0 keep-alive (`Connection: keep-alive`), which h11 does not do but libevent's evhttp does;
  * the per-request deadline (`--rest_api_timeout_in_ms`): 504 "Deadline Exceeded", and the request is told to
    stop at its next batch boundary (the real server passes the same deadline to Session::Run).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import socket
import threading

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.json_tensor import error_body
from serving.rest import Api, RestOptions

log = logging.getLogger("serving.http")

_V1_RE = re.compile(r"/v1/.*", re.IGNORECASE)
_NOT_FOUND_PAGE = (
    b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
    b"The requested URL was not found on this server.</BODY></HTML>\n"
)
JSON = b"application/json"
_MAX_DRAIN_BYTES = 256 * 1024 * 1024  # what a 413'd client may still send before the connection is cut


def _asks_keep_alive(headers: dict) -> bool:
    tokens = {t.strip() for t in headers.get("connection", "").lower().split(",")}
    return "keep-alive" in tokens and "close" not in tokens


def _announcing_keep_alive(send):
    """Wraps an ASGI send so a response that keeps an HTTP/1.0 connection open says `Connection: keep-alive`
    (evhttp_make_header_response); one that closes it (413, framing errors) says `close` as before."""

    async def wrapped(message):
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if not any(k.lower() == b"connection" for k, _ in headers):
                message = {**message, "headers": [*headers, (b"connection", b"keep-alive")]}
        await send(message)

    return wrapped


class _Connection(h11.Connection):
    """h11 with HTTP/1.0 keep-alive, as libevent's evhttp (TF Serving's HTTP server) does it.

    h11 closes every HTTP/1.0 connection after one response. evhttp keeps it open when the request says
    `Connection: keep-alive` (evhttp_is_connection_keepalive) and then answers with `Connection: keep-alive`
    and a Content-Length (evhttp_make_header_response), as old clients and the compose healthcheck expect.
    Relies on h11's connection-state object (h11 is pinned; tests/test_serving_fidelity.py covers it).
    """

    def _process_event(self, role, event) -> None:
        super()._process_event(role, event)
        if role is self.their_role and type(event) is h11.Request and is_http10_keepalive(event):
            self._cstate.keep_alive = True


def is_http10_keepalive(event) -> bool:
    """An HTTP/1.0 request (h11.Request) whose Connection header asks for keep-alive and not close."""
    tokens = {t.strip().lower() for k, v in event.headers if k.lower() == b"connection" for t in v.split(b",")}
    return event.http_version == b"1.0" and b"keep-alive" in tokens and b"close" not in tokens


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with JSON framing errors and an idle timeout from the first byte on."""

    idle_timeout_s = 50.0  # set per server by make_protocol_class

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conn = _Connection(h11.SERVER, max_incomplete_event_size=self.conn._max_incomplete_event_size)

    def connection_made(self, transport):
        super().connection_made(transport)
        self._idle = None
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._arm_idle()

    def handle_events(self) -> None:
        try:
            super().handle_events()
        except Exception as err:  # noqa: BLE001  e.g. a non-ASCII request target that uvicorn cannot decode
            if not self.transport.is_closing():
                self.send_400_response(f"{type(err).__name__}: {err}")

    def eof_received(self):
        """The client half-closed. uvicorn would close at once, dropping the answer to a complete request."""
        serving = self.cycle is not None and not self.cycle.response_complete
        if serving and self.conn.their_state is h11.SEND_BODY and self.cycle.response_started:
            self.cycle.disconnected = True  # an early answer (413) is out: stop draining; closes once written
            self.cycle.message_event.set()
        elif serving and self.conn.their_state is h11.SEND_BODY:
            self.send_400_response("connection closed before the whole request body arrived")
        elif serving:
            self._close_after_response = True
            return True  # keep the write side open; on_response_complete closes
        elif self.conn.their_state is not h11.IDLE or self.conn.trailing_data[0]:
            self.send_400_response("connection closed in the middle of a request")
        elif not self.transport.is_closing():
            self.transport.close()
        return None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if getattr(self, "_close_after_response", False) and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc):
        if self._idle is not None:
            self._idle.cancel()
        super().connection_lost(exc)

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if not self.transport.is_closing():
            self._idle = self.loop.call_later(self.idle_timeout_s, self._on_idle)

    def _on_idle(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_idle()  # a request is being served; the app enforces its own deadline and body timeout
            return
        if not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this on h11.RemoteProtocolError: answer like the JSON API, then close."""
        body = error_body(f"Malformed HTTP request: {msg}")
        headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            # h11 cannot frame a response (e.g. the request line itself was unreadable): write a minimal one.
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
            )
        self.transport.close()


def make_protocol_class(idle_timeout_s: float) -> type[H11Protocol]:
    return type("RestProtocol", (_Protocol,), {"idle_timeout_s": idle_timeout_s})


class _BodyError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class RestApp:
    """The ASGI application: CORS preflight, Prometheus page, plain 404 outside /v1, JSON API inside."""

    def __init__(self, api: Api, options: RestOptions):
        self.api = api
        self.options = options
        self.executor = concurrent.futures.ThreadPoolExecutor(options.num_threads, thread_name_prefix="rest")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        method = scope["method"]
        path = scope.get("raw_path", b"").split(b"?", 1)[0].decode("latin-1") or scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope.get("http_version") == "1.0" and _asks_keep_alive(headers):
            send = _announcing_keep_alive(send)
        try:
            body = await self._read_body(headers, receive, send)
        except _BodyError as err:
            await self._send(send, err.status, error_body(err.message), JSON, close=True)
            return
        if body is None:
            return  # answered 413 already
        if method == "OPTIONS":
            await self._options(send, headers)
        elif self.options.prometheus_path and path == self.options.prometheus_path and method == "GET":
            from serving.metrics import CONTENT_TYPE

            await self._send(send, 200, self.api.metrics.render() if self.api.metrics else b"", CONTENT_TYPE.encode())
        elif not _V1_RE.fullmatch(path):
            await self._send(send, 404, _NOT_FOUND_PAGE, b"text/html")
        else:
            status, payload = await self._run(method, path, body)
            await self._send(send, status, payload, JSON, head=method == "HEAD")

    async def _read_body(self, headers: dict, receive, send) -> bytes | None:
        """The whole body; None once a too-large body was answered with 413; _BodyError for a stalled or cut one.

        A Content-Length above the limit is answered at once (a client waiting for `100 Continue` never sends
        the body); a chunked body is answered as soon as it passes the limit.
        """
        limit = self.options.max_request_bytes
        declared = headers.get("content-length")
        # h11 accepts only digits here; the length test keeps int() away from Python's max_str_digits.
        if declared is not None and (len(declared) > 18 or int(declared) > limit):
            await self._reject_too_large(send, receive, declared)
            return None
        parts, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.options.idle_timeout_s)
            except asyncio.TimeoutError:
                raise _BodyError(408, f"No request body bytes for {self.options.idle_timeout_s:g} s") from None
            if message["type"] == "http.disconnect":
                raise _BodyError(400, "Client closed the connection before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._reject_too_large(send, receive, f"more than {limit}")
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def _reject_too_large(self, send, receive, size: str) -> None:
        """Sends the whole 413 answer now, then reads and drops what the client still sends (at most
        _MAX_DRAIN_BYTES, or until it pauses for the idle timeout) before closing: closing a socket with unread
        bytes makes the kernel send a reset, which can destroy the answer before the client reads it."""
        limit = self.options.max_request_bytes
        payload = error_body(f"Request body of {size} bytes exceeds the dev server limit --max_request_bytes="
                             f"{limit}; send smaller batches.")
        headers = [(b"content-type", JSON), (b"content-length", str(len(payload)).encode()), (b"connection", b"close")]
        if self.options.enable_cors:
            headers.append((b"access-control-allow-origin", b"*"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": True})
        drained = 0
        while drained < _MAX_DRAIN_BYTES:
            try:
                message = await asyncio.wait_for(receive(), self.options.idle_timeout_s)
            except asyncio.TimeoutError:
                break
            drained += len(message.get("body", b""))
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _run(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, self.api.handle, method, path, body, cancelled)
        try:
            return await asyncio.wait_for(future, self.options.timeout_ms / 1000.0)
        except asyncio.TimeoutError:
            cancelled.set()  # a running predict stops at its next batch; a queued one never starts
            return 504, error_body("Deadline Exceeded")

    async def _options(self, send, headers: dict) -> None:
        if re.search(r"https?://", headers.get("origin", "")):
            extra = []
            if self.options.enable_cors:
                extra = [(b"access-control-allow-methods", b"POST, GET"),
                         (b"access-control-allow-headers", b"Content-Type")]
            await self._send(send, 200, b"", b"text/plain", extra=extra)
        else:
            await self._send(send, 400, error_body("Origin header is missing in CORS preflight"), JSON)

    async def _send(self, send, status: int, payload: bytes, content_type: bytes, *, close: bool = False,
                    head: bool = False, extra: list | None = None) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())]
        if self.options.enable_cors:
            headers.append((b"access-control-allow-origin", b"*"))
        if close:
            headers.append((b"connection", b"close"))
        headers.extend(extra or [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else payload})


def bind_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """Binds the REST port (OSError if taken). With listen=False the port is reserved but refuses connections,
    which is how the CLI keeps it closed while the initial models load, like the real server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    if listen:
        sock.listen(1024)
    return sock


def make_uvicorn_server(api: Api, options: RestOptions) -> uvicorn.Server:
    config = uvicorn.Config(
        RestApp(api, options), http=make_protocol_class(options.idle_timeout_s), loop="asyncio", ws="none",
        lifespan="off", interface="asgi3", log_level="warning", access_log=False, server_header=False,
        timeout_keep_alive=max(1, int(options.idle_timeout_s)), timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


class ServerThread:
    """A REST server on a background thread (for in-process tests and tools): `.port`, `.url`, `.stop()`."""

    def __init__(self, api: Api, options: RestOptions):
        self.sock = bind_socket(options.host, options.port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{options.host}:{self.port}"
        self.server = make_uvicorn_server(api, options)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()
