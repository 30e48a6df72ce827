"""Run the study app with uvicorn: in the foreground (serve) or in a thread (tests, pilots)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from stancelab.engine import StancelabError


def uvicorn_proxy_options(forwarded_allow_ips: str | None) -> dict[str, Any]:
    """uvicorn settings that trust X-Forwarded-For / -Proto only from the given proxy
    addresses (comma-separated). None trusts no one: uvicorn's own default trusts
    127.0.0.1, so any local client (or a proxy on the same host passing the header
    through) could pick its address and escape the per-address rate limits."""
    if not forwarded_allow_ips:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": forwarded_allow_ips}


@contextlib.contextmanager
def running_server(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout_s: float = 30.0,
    forwarded_allow_ips: str | None = None,
) -> Iterator[str]:
    """Serve an ASGI app in a background thread; yields its base URL, stops on exit.
    Proxy headers count only from ``forwarded_allow_ips`` (see ``uvicorn_proxy_options``)."""

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        **uvicorn_proxy_options(forwarded_allow_ips),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="study-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise StancelabError(f"the study server did not start on {host}:{bound_port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
