"""Real llama.cpp HTTP servers in subprocesses, and a loopback proxy that injects faults.

The server is the real thing (``python -m stancelab.engine.llamacpp_server``), so it can
be killed and restarted on the same port. The proxy sits in front of it and answers each
request according to a script of faults; only it is fake, and only for fault injection.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
CHAT_ONLY = (
    "This is a chat model and not supported in the v1/completions endpoint. "
    "Did you mean to use v1/chat/completions?"
)
"""OpenAI's answer on /completions for a chat model."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """llama.cpp's HTTP server on a loopback port, in a subprocess that can be killed."""

    def __init__(
        self,
        model: str = "smollm2-135m",
        port: int = 0,
        parallel: int = 4,
        ctx_per_slot: int = 2048,
        alias: str = "smollm2-135m",
        threads: int = 1,
    ) -> None:
        self.model = model
        self.port = port
        self.parallel = parallel
        self.ctx_per_slot = ctx_per_slot
        self.alias = alias
        # One thread: on a shared 2-core machine llama.cpp's spinning worker threads slow
        # down badly when other processes take the cores.
        self.threads = threads
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        """Base URL clients use (with /v1)."""
        return f"http://{LOOPBACK}:{self.port}/v1"

    def start(self, timeout: float = 60.0) -> str:
        """Start it and wait for the 'listening' line; later starts reuse the same port."""
        cmd = [
            sys.executable,
            "-m",
            "stancelab.engine.llamacpp_server",
            "--model",
            self.model,
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--parallel",
            str(self.parallel),
            "--ctx-per-slot",
            str(self.ctx_per_slot),
            "--alias",
            self.alias,
            "--threads",
            str(self.threads),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("listening "):
                    self.port = int(urlsplit(line.split()[1]).port or 0)
                    return self.url
                if not line and self.proc.poll() is not None:
                    break
        err = self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""
        self.stop()
        raise RuntimeError(f"llama.cpp server did not start: {err[-500:]}")

    def kill(self) -> None:
        """SIGKILL, as a crash or an out-of-memory kill would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Terminate politely, then kill."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


class FaultProxy:
    """Forwards to an upstream server, answering each request per a script of faults.

    Faults: ``pass``, ``429`` (with Retry-After), ``500``, ``slow`` (waits ``slow_s`` then
    forwards), ``malformed`` (invalid JSON), ``truncated`` (half the body, then close),
    ``reset`` (TCP reset), ``nologprobs`` (forwards and strips log-probabilities),
    ``wrong-model`` (vLLM's 404 for an unknown model), ``echo-key-401``, ``chat-only``
    (OpenAI's 404 on /completions for a chat model; chat requests are forwarded),
    ``drop-stream`` (forwards a streamed answer's first ``stream_events`` server-sent
    events, then drops the connection mid-body).
    """

    def __init__(self, upstream: str, default: str = "pass") -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or LOOPBACK
        self.upstream_port = int(parts.port or 80)
        self.default = default
        self.faults: deque[str] = deque()
        self.seen: list[tuple[str, str]] = []
        self.headers: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        self.retry_after = "1"
        self.slow_s = 3.0
        self.stream_events = 4
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.handle(self, b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                proxy.handle(self, self.rfile.read(length))

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """Base URL of the proxy (with /v1)."""
        return f"http://{LOOPBACK}:{self.server.server_address[1]}/v1"

    def script(self, *faults: str) -> None:
        """Queue faults for the next requests (then the default applies)."""
        with self._lock:
            self.faults.extend(faults)

    def count(self, fault: str | None = None, path: str | None = None) -> int:
        """How many requests got this fault (any fault if None) on this path suffix."""
        with self._lock:
            return sum(
                1
                for p, f in self.seen
                if (fault is None or f == fault) and (path is None or p.endswith(path))
            )

    def close(self) -> None:
        """Stop listening."""
        self.server.shutdown()
        self.server.server_close()

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            headers = {"Content-Type": "application/json"}
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, {"Content-Type": resp.getheader("Content-Type", "")}, resp.read()
        finally:
            conn.close()

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        h.send_response(status)
        for key, value in (headers or {"Content-Type": "application/json"}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()

    def handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        """Answer one request according to the next scripted fault."""
        with self._lock:
            fault = self.faults.popleft() if self.faults else self.default
            self.seen.append((h.path, fault))
            self.headers.append(dict(h.headers.items()))
            self.bodies.append(body)
        # The client may have given up (time-out) before the answer came.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._apply(h, body, fault)

    def _apply(self, h: BaseHTTPRequestHandler, body: bytes, fault: str) -> None:
        error = {"error": {"message": f"injected {fault}", "type": "server_error"}}
        if fault == "429":
            self._send(
                h,
                429,
                json.dumps(error).encode(),
                {"Content-Type": "application/json", "Retry-After": self.retry_after},
            )
        elif fault == "500":
            self._send(h, 500, json.dumps(error).encode())
        elif fault == "malformed":
            self._send(h, 200, b'{"choices": [{"text": "unfinished')
        elif fault == "truncated":
            status, headers, data = self._forward(h, body)
            self._send(h, status, data[: len(data) // 2], headers, length=len(data))
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
        elif fault == "drop-stream":
            status, headers, data = self._forward(h, body)
            events = data.split(b"\n\n")[: self.stream_events]
            part = b"".join(event + b"\n\n" for event in events)
            self._send(h, status, part, headers, length=len(data))
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
        elif fault == "reset":
            # SO_LINGER 0 makes close() send a TCP RST instead of a clean FIN.
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            h.connection.close()
        elif fault == "wrong-model":
            model = json.loads(body or b"{}").get("model", "?")
            message = {
                "error": {
                    "message": f"The model `{model}` does not exist.",
                    "type": "NotFoundError",
                    "code": 404,
                }
            }
            self._send(h, 404, json.dumps(message).encode())
        elif fault == "chat-only" and not h.path.endswith("/chat/completions"):
            message = {"error": {"message": CHAT_ONLY, "type": "invalid_request_error"}}
            self._send(h, 404, json.dumps(message).encode())
        elif fault == "echo-key-401":
            key = h.headers.get("Authorization", "").removeprefix("Bearer ")
            message = {"error": {"message": f"Incorrect API key provided: {key}"}}
            self._send(h, 401, json.dumps(message).encode())
        else:
            if fault == "slow":
                time.sleep(self.slow_s)
            status, headers, data = self._forward(h, body)
            if fault == "nologprobs" and status == 200:
                answer = json.loads(data)
                for choice in answer.get("choices", []):
                    choice["logprobs"] = None
                data = json.dumps(answer).encode()
            self._send(h, status, data, headers)
