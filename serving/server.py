"""A local model server speaking TF Serving's REST and gRPC APIs, for the exports of
`serving.export` (or any TF2 SavedModels in TF Serving's layout).

    python -m serving.server --model-config PATH/models.config \\
        [--rest-port 8501] [--grpc-port 8500] [--host 127.0.0.1] [--poll-seconds 1]
        [--model-config-poll-seconds 10] [--max-request-bytes N] [--max-inflight-bytes N]
        [--max-connections N] [--header-timeout S] [--body-timeout S]

Serves the newest version of each configured model, picks up new version folders by polling
the base paths and added or removed models by re-reading the config. Start-up problems (a
missing or bad config, a port in use) end it with a one-line error. Stand-in for
`tensorflow_model_server`, which takes the same models.config; the same client works against
both.
"""

# ruff: noqa: E402 - TensorFlow must stay quiet from its import on
from __future__ import annotations

if __name__ == "__main__":
    from l2lda_tf.cli import quiet_startup

    quiet_startup()

import argparse
import dataclasses
import gc
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from serving.grpc_service import grpc_server
from serving.http_server import HttpLimits, HttpServer
from serving.registry import ModelRegistry, ServingError
from serving.rest import RestApi

DEFAULT_MAX_REQUEST_BYTES = HttpLimits.max_request_bytes


class ModelServer:
    """REST and gRPC front ends over one registry. Port 0 picks a free port; the bound ports
    are `rest_port` and `grpc_port` after construction. `limits` bounds what REST clients can
    hold (see `HttpLimits`); `max_request_bytes`, if given, overrides its body limit and is
    gRPC's message limit too."""

    def __init__(self, model_config: str | Path, host: str = "127.0.0.1", rest_port: int = 8501,
                 grpc_port: int = 8500, poll_seconds: float = 1.0,
                 max_request_bytes: int | None = None, *, config_poll_seconds: float = 0.0,
                 limits: HttpLimits | None = None):
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
        if config_poll_seconds < 0:
            raise ValueError(f"config_poll_seconds must be >= 0, got {config_poll_seconds}")
        limits = limits or HttpLimits()
        if max_request_bytes is not None:
            limits = dataclasses.replace(
                limits, max_request_bytes=max_request_bytes,
                max_inflight_bytes=max(limits.max_inflight_bytes, max_request_bytes))
        self.limits = limits
        self.registry = ModelRegistry.from_config_file(model_config)
        self.host, self.poll_seconds = host, poll_seconds
        self.config_poll_seconds = config_poll_seconds
        self.rest = RestApi(self.registry, limits)
        self._http = HttpServer(self.rest.app, host, rest_port, limits)
        self.rest_port = self._http.port
        try:
            self._grpc, self.grpc_port = grpc_server(self.registry, f"{host}:{grpc_port}",
                                                     limits.max_request_bytes)
        except Exception:
            self._http.socket.close()  # do not leave the REST port bound
            raise

    def start(self) -> ModelServer:
        """Loads the newest versions (freezing the heap they make, see `refreeze_heap`), then
        serves in background threads."""
        self.registry.poll()
        self.registry.start_polling(self.poll_seconds, self.config_poll_seconds)
        self._grpc.start()
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()
        self._grpc.stop(grace=1).wait()
        self.registry.stop()
        self.rest.close()
        gc.unfreeze()  # let a process that goes on (say a test session) collect the models

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    defaults = HttpLimits()
    parser = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", required=True,
                        help="ModelServerConfig text file (models.config from serving.export)")
    parser.add_argument("--rest-port", type=int, default=8501, help="REST port (0: any free)")
    parser.add_argument("--grpc-port", type=int, default=8500, help="gRPC port (0: any free)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default loopback; 0.0.0.0 exposes the server)")
    parser.add_argument("--poll-seconds", type=float, default=1.0,
                        help="how often to look for new version folders")
    parser.add_argument("--model-config-poll-seconds", type=float, default=10.0,
                        help="how often to re-read --model-config for added or removed models "
                             "(0: never; TF Serving's --model_config_file_poll_wait_seconds)")
    parser.add_argument("--max-request-bytes", type=int, default=defaults.max_request_bytes,
                        help="largest request body accepted (REST and gRPC)")
    parser.add_argument("--max-inflight-bytes", type=int, default=defaults.max_inflight_bytes,
                        help="REST bodies read or decoded at once, in bytes (bounds memory)")
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections,
                        help="open REST connections; more are answered 503")
    parser.add_argument("--header-timeout", type=float, default=defaults.header_timeout,
                        help="seconds a REST client has to send its request headers")
    parser.add_argument("--body-timeout", type=float, default=defaults.body_timeout,
                        help="seconds a REST client has to send its request body")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's own start-up logs and warnings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    try:
        limits = HttpLimits(max_request_bytes=args.max_request_bytes,
                            max_inflight_bytes=args.max_inflight_bytes,
                            max_connections=args.max_connections,
                            header_timeout=args.header_timeout, body_timeout=args.body_timeout)
        server = ModelServer(args.model_config, args.host, args.rest_port, args.grpc_port,
                             args.poll_seconds, config_poll_seconds=args.model_config_poll_seconds,
                             limits=limits)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    start = time.perf_counter()
    server.start()
    for name, model in server.registry.models.items():
        print(f"model {name}: {_describe(model)}", flush=True)
    print(f"loaded in {time.perf_counter() - start:.1f} s", flush=True)
    print(f"REST API at http://{args.host}:{server.rest_port}  "
          f"gRPC at {args.host}:{server.grpc_port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop()


def _describe(model) -> str:
    try:
        return ", ".join(f"version {v} {state}" for v, state, _ in model.status())
    except ServingError:
        return f"no version yet under {model.base_path}"


if __name__ == "__main__":
    main()
