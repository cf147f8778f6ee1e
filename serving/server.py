"""A local model server speaking TF Serving's REST and gRPC APIs, for the exports of
`serving.export` (or any TF2 SavedModels in TF Serving's layout).

    python -m serving.server --model-config PATH/models.config \\
        [--rest-port 8501] [--grpc-port 8500] [--host 127.0.0.1]

Serves the newest version of each configured model and picks up new version folders by polling
the base paths. Stand-in for `tensorflow_model_server`, which takes the same models.config; the
same client works against both.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from serving.grpc_service import grpc_server
from serving.registry import ModelRegistry, ServingError
from serving.rest import RestServer

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


class ModelServer:
    """REST and gRPC front ends over one registry. Port 0 picks a free port; the bound ports
    are `rest_port` and `grpc_port` after `start()`."""

    def __init__(self, model_config: str | Path, host: str = "127.0.0.1", rest_port: int = 8501,
                 grpc_port: int = 8500, poll_seconds: float = 1.0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
        if max_request_bytes <= 0:
            raise ValueError(f"max_request_bytes must be positive, got {max_request_bytes}")
        self.registry = ModelRegistry.from_config_file(model_config)
        self.host, self.poll_seconds = host, poll_seconds
        self._rest = RestServer((host, rest_port), self.registry, max_request_bytes)
        self.rest_port = self._rest.server_address[1]
        try:
            self._grpc, self.grpc_port = grpc_server(self.registry, f"{host}:{grpc_port}",
                                                     max_request_bytes)
        except Exception:
            self._rest.server_close()  # do not leave the REST port bound
            raise
        self._rest_thread: threading.Thread | None = None

    def start(self) -> ModelServer:
        """Loads the newest versions, then serves in background threads."""
        self.registry.poll()
        self.registry.start_polling(self.poll_seconds)
        self._grpc.start()
        self._rest_thread = threading.Thread(target=self._rest.serve_forever, name="rest",
                                             daemon=True)
        self._rest_thread.start()
        return self

    def stop(self) -> None:
        self._rest.shutdown()
        self._rest.server_close()
        self._grpc.stop(grace=1).wait()
        self.registry.stop()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="largest request body accepted (REST and gRPC)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    server = ModelServer(args.model_config, args.host, args.rest_port, args.grpc_port,
                         args.poll_seconds, args.max_request_bytes).start()
    for name, model in server.registry.models.items():
        print(f"model {name}: {_describe(model)}", flush=True)
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
