"""Serve a GGUF model over llama.cpp's OpenAI-compatible HTTP API (through xllamacpp).

Run ``python -m stancelab.engine.llamacpp_server --model smollm2-135m --port 8080``; it
prints ``listening http://HOST:PORT`` once the model is loaded and serves until killed.
The ``openai`` backend (engine/openai_compat.py) talks to it like to any other server;
tests and benchmarks start it in a subprocess so it can be killed and restarted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from stancelab.engine._errors import EngineError, StancelabError
from stancelab.engine._llamacpp import engine_params
from stancelab.engine._models import resolve_model


def start_server(
    model: str,
    host: str = "127.0.0.1",
    port: int = 0,
    n_parallel: int = 4,
    ctx_per_slot: int = 2048,
    threads: int | None = None,
    alias: str | None = None,
    cache_ram_mib: int = 8192,
) -> tuple[Any, str]:
    """Load a model and start llama.cpp's HTTP listener; returns (server, base address)."""
    import xllamacpp  # noqa: PLC0415 - lazy: the llama.cpp engine is heavy to import

    name, path = resolve_model(model)
    params = engine_params(path, n_parallel, ctx_per_slot, threads, cache_ram_mib)
    params.hostnames = [host]
    params.port = port
    # The alias is the model id the server lists, so clients can check the name they use.
    params.model_alias = {alias or name}
    try:
        server = xllamacpp.Server(params)
    except Exception as exc:  # the binding raises a bare RuntimeError (port taken, bad file)
        raise EngineError(f"llama.cpp server could not start on {host}:{port}: {exc}") from exc
    return server, str(server.listening_address)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="embedded name or .gguf path")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--parallel", type=int, default=4, help="slots (requests in flight)")
    parser.add_argument("--ctx-per-slot", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--alias", default=None, help="model id clients use (default: name)")
    args = parser.parse_args(argv)
    try:
        server, address = start_server(
            args.model,
            host=args.host,
            port=args.port,
            n_parallel=args.parallel,
            ctx_per_slot=args.ctx_per_slot,
            threads=args.threads,
            alias=args.alias,
        )
    except StancelabError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"listening {address}", flush=True)
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
