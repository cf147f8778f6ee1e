"""A bounded load test of a running server (ours or tensorflow_model_server): a fixed number of
classifier predict requests from a fixed number of threads; prints latency percentiles,
requests/s and the error count.

    python -m serving.loadtest [--rest URL | --grpc HOST:PORT] [--requests 2000] [--threads 8]
        [--batch 1] [--model classifier]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from serving.client import DEFAULT_REST, GrpcClient, RestClient, ServingClientError


@dataclass
class LoadResult:
    """What a load test saw. Rates count answered requests only (a fast failure is no
    throughput); the percentiles are of answered requests, None if none was answered."""

    requests: int
    errors: int
    seconds: float
    requests_per_second: float
    images_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    first_error: str = ""


def run_load(make_client: Callable[[], object], model: str, images: np.ndarray,
             requests: int = 2000, threads: int = 8) -> LoadResult:
    """Sends `requests` predict calls of `images` (one batch each), split over `threads`
    threads each with its own client; returns the latencies and errors seen."""
    if requests < 1 or threads < 1:
        raise ValueError(f"requests and threads must be positive, got {requests}, {threads}")
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counts = [requests // threads + (i < requests % threads) for i in range(threads)]

    def worker(count: int) -> None:
        client = make_client()
        mine, failed = [], []
        for _ in range(count):
            start = time.perf_counter()
            try:
                client.predict(model, {"images": images})
                mine.append(time.perf_counter() - start)
            except Exception as error:  # any failure is counted, none ends the thread
                failed.append(f"{type(error).__name__}: {error}")
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    pool = [threading.Thread(target=worker, args=(n,)) for n in counts]
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    seconds = time.perf_counter() - start
    answered = len(latencies)
    p50 = p99 = None
    if answered:
        p50, p99 = (float(p) for p in np.percentile(np.asarray(latencies) * 1000, [50, 99]))
    return LoadResult(requests, len(errors), seconds, answered / seconds,
                      answered * len(images) / seconds, p50, p99,
                      errors[0] if errors else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rest", default=None, help=f"REST base URL (default {DEFAULT_REST})")
    where.add_argument("--grpc", default=None, help="gRPC target HOST:PORT")
    parser.add_argument("--model", default="classifier")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    args = parser.parse_args(argv)

    def make_client():
        return GrpcClient(args.grpc) if args.grpc else RestClient(args.rest or DEFAULT_REST)

    if args.requests < 1 or args.threads < 1 or args.batch < 1:
        sys.exit("error: --requests, --threads and --batch must be positive")
    try:
        shape = make_client().input_shape(args.model)
    except (ServingClientError, OSError, ValueError) as error:
        where = args.grpc or args.rest or DEFAULT_REST
        sys.exit(f"error: cannot get {args.model}'s input shape from {where}: {error} "
                 "(is the server running there?)")
    images = np.random.default_rng(0).uniform(size=(args.batch, *shape)).astype(np.float32)
    result = run_load(make_client, args.model, images, args.requests, args.threads)
    print(json.dumps({"transport": "grpc" if args.grpc else "rest", "batch": args.batch,
                      "threads": args.threads, **asdict(result)}, indent=2))


if __name__ == "__main__":
    main()
