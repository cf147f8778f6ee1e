"""TF Serving's REST API as an ASGI app (Starlette), served by `serving.http_server` (uvicorn).

    GET  /v1/models/NAME[/versions/V | /labels/L]            model status
    GET  /v1/models/NAME[/versions/V | /labels/L]/metadata   signatures
    POST /v1/models/NAME[/versions/V | /labels/L]:predict    {"instances": …} or {"inputs": …}

Bodies and errors are shaped as TF Serving shapes them (`{"predictions": …}`, `{"outputs": …}`,
`{"error": "…"}`), with its mapping of status codes to HTTP statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

import grpc
import numpy as np
import orjson
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from serving.http_server import HttpLimits
from serving.registry import (
    InputSpec,
    ModelRegistry,
    ServingError,
    invalid,
    signature_def_map,
    status_response,
)

# Every method reaches the endpoint, so each gets a JSON answer (405 for the unserved ones).
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]
CLOSE = {"Connection": "close"}  # for errors after which the rest of the body is not read

PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                  r"(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
                  r"(?P<suffix>/metadata|:predict|:classify|:regress)?$")

HTTP_STATUS = {  # TF Serving's http_rest_api_handler mapping
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
}


def _to_array(spec: InputSpec, value) -> np.ndarray:
    """A JSON value as an array of the signature's dtype, or a message naming what is wrong."""
    name = spec.name
    depth, inner = 0, value
    while isinstance(inner, list) and inner and depth <= len(spec.shape):
        depth, inner = depth + 1, inner[0]
    if depth > len(spec.shape):  # before numpy meets, say, lists nested 5,000 deep
        raise invalid(f"input '{name}' is nested deeper than the {len(spec.shape)} dimensions "
                      f"the signature takes")
    try:
        array = np.asarray(value)
    except ValueError as error:  # ragged nested lists
        raise invalid(f"input '{name}' is ragged: every row must have the same shape "
                      f"({error})") from error
    kind, wanted = array.dtype.kind, np.dtype(spec.dtype.as_numpy_dtype)
    if kind not in "iuf" or (wanted.kind in "iu" and kind == "f"):
        got = {"U": "strings", "O": "mixed or null values", "b": "booleans",
               "f": "non-integer numbers"}.get(kind, array.dtype.name)
        raise invalid(f"input '{name}' must hold {wanted.name} numbers, got {got}")
    spec.check_declared(spec.dtype, array.shape)  # before the copy to the signature's dtype
    return array.astype(wanted)


def _check_batch(inputs: dict[str, np.ndarray]) -> None:
    sizes = {name: value.shape[0] if value.ndim else None for name, value in inputs.items()}
    if len(set(sizes.values())) > 1:
        raise invalid(f"all inputs must have the same 0-th dimension (batch), got {sizes}")


def decode_predict(body: dict,
                   specs: dict[str, InputSpec]) -> tuple[dict[str, np.ndarray], bool]:
    """The named input arrays of a predict body, and whether it used the row format."""
    if ("instances" in body) == ("inputs" in body):
        raise invalid('a predict request needs exactly one of "instances" (row format) or '
                      '"inputs" (columnar format)')
    names = sorted(specs)
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise invalid('"instances" must be a non-empty list with one entry per example')
        if all(isinstance(row, dict) for row in rows):
            for index, row in enumerate(rows):
                if set(row) != set(names):
                    raise invalid(f"instance {index} must have exactly the keys {names}, "
                                  f"it has {sorted(row)}")
            inputs = {n: _to_array(specs[n], [row[n] for row in rows]) for n in names}
            _check_batch(inputs)
            return inputs, True
        if len(names) != 1:
            raise invalid(f"the signature takes several inputs {names}: each instance must be "
                          "an object naming them")
        return {names[0]: _to_array(specs[names[0]], rows)}, True
    columns = body["inputs"]
    if isinstance(columns, dict):
        unknown = sorted(set(columns) - set(names))
        if unknown:
            raise invalid(f"input tensor alias not found in signature: {', '.join(unknown)}. "
                          f"Inputs expected to be in the set {{{', '.join(names)}}}.")
        return {n: _to_array(specs[n], v) for n, v in columns.items()}, False
    if len(names) != 1:
        raise invalid(f'the signature takes several inputs {names}: "inputs" must be an object '
                      "naming them")
    return {names[0]: _to_array(specs[names[0]], columns)}, False


def encode_predict(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    """TF Serving's predict response: `predictions` (rows) or `outputs` (columns); one output
    appears bare, several by name."""
    lists = {name: value.tolist() for name, value in outputs.items()}
    if not row_format:
        return {"outputs": next(iter(lists.values())) if len(lists) == 1 else lists}
    if len(lists) == 1:
        return {"predictions": next(iter(lists.values()))}
    batch = {len(v) if isinstance(v, list) else None for v in lists.values()}
    if len(batch) != 1 or None in batch:
        raise invalid('outputs do not share a batch size; use the columnar "inputs" format')
    return {"predictions": [{name: value[i] for name, value in lists.items()}
                            for i in range(batch.pop())]}


def status_json(states: list[tuple[int, str, str]]) -> dict:
    """TF Serving's model status body, via its GetModelStatusResponse proto."""
    return json_format.MessageToDict(status_response(states),
                                     always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class ByteBudget:
    """At most `limit` bytes of request bodies being read or decoded at once; a request waits
    for room, for `timeout` seconds at most (then 503). `peak` is the most ever held."""

    def __init__(self, limit: int, timeout: float):
        self.limit, self.timeout = limit, timeout
        self.in_use = self.peak = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, size: int):
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.in_use + size <= self.limit),
                    self.timeout)
            except TimeoutError as error:
                raise _HttpError(HTTPStatus.SERVICE_UNAVAILABLE,
                                 f"the server is busy decoding {self.in_use} bytes of other "
                                 "requests; retry later") from error
            self.in_use += size
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= size
                self._changed.notify_all()


class RestApi:
    """TF Serving's REST API over a registry, as an ASGI app (`app`, Starlette) for
    `serving.http_server.HttpServer`. Reading bodies happens on the event loop under a
    `ByteBudget`; JSON decoding, the models and JSON encoding run in `workers` threads."""

    def __init__(self, registry: ModelRegistry, limits: HttpLimits):
        self.registry, self.limits = registry, limits
        self.budget = ByteBudget(limits.max_inflight_bytes, limits.queue_timeout)
        self._pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="rest")
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=METHODS)])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _endpoint(self, request: Request) -> Response:
        try:
            return await self._respond(request)
        except ServingError as error:
            return _json(HTTP_STATUS.get(error.code, HTTPStatus.INTERNAL_SERVER_ERROR),
                         {"error": error.message})
        except _HttpError as error:
            return _json(error.status, {"error": error.message}, error.headers)
        except ClientDisconnect:
            return _json(HTTPStatus.BAD_REQUEST, {"error": "client disconnected"})
        except Exception as error:  # answer rather than drop the connection; the server lives on
            return _json(HTTPStatus.INTERNAL_SERVER_ERROR,
                         {"error": f"{type(error).__name__}: {error}"})

    async def _respond(self, request: Request) -> Response:
        method, path = request.method, request.url.path
        url_bytes = len(request.scope["raw_path"]) + len(request.scope["query_string"])
        if url_bytes > self.limits.max_head_bytes:  # h11 checks only heads that come in pieces
            raise _HttpError(HTTPStatus.REQUEST_URI_TOO_LONG,
                             f"the URL has {url_bytes} bytes, more than the limit of "
                             f"{self.limits.max_head_bytes}", CLOSE)
        if method not in ("GET", "HEAD", "POST"):
            raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED,
                             f"{method} is not served: GET a model's status or metadata, "
                             "POST to :predict", {"Allow": "GET, HEAD, POST"})
        match = PATH.match(path)
        is_get = method in ("GET", "HEAD")
        if not match or is_get != (match["suffix"] in (None, "/metadata")):
            # As TF Serving: a malformed /v1/ request is a bad request; other paths do not exist.
            status = HTTPStatus.BAD_REQUEST if path.startswith("/v1/") else HTTPStatus.NOT_FOUND
            shown = path if len(path) <= 200 else path[:200] + "…"
            raise _HttpError(status, f"Malformed request: {method} {shown}")
        loop = asyncio.get_running_loop()
        if is_get:
            body = await loop.run_in_executor(self._pool, self._route, match, b"")
            return Response(body, media_type="application/json")
        size = self._declared_length(request)
        async with self.budget.hold(max(size, 1)):
            try:
                data = await asyncio.wait_for(self._read(request, size),
                                              self.limits.body_timeout)
            except TimeoutError as error:
                raise _HttpError(HTTPStatus.REQUEST_TIMEOUT,
                                 f"request body not received within "
                                 f"{self.limits.body_timeout} s", CLOSE) from error
            body = await loop.run_in_executor(self._pool, self._route, match, data)
        return Response(body, media_type="application/json")

    def _declared_length(self, request: Request) -> int:
        """The body's Content-Length, refused before any of it is read if over the limit."""
        if "chunked" in request.headers.get("transfer-encoding", "").lower():
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED,
                             "chunked bodies are not accepted: send a Content-Length", CLOSE)
        try:
            size = int(request.headers.get("content-length", "0"))
        except ValueError as error:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number",
                             CLOSE) from error
        limit = self.limits.max_request_bytes
        if size > limit:  # and close: the unread body must not be taken for a request
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"request body of {size} bytes exceeds the limit of {limit} bytes",
                             CLOSE)
        return size

    @staticmethod
    async def _read(request: Request, size: int) -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
        if len(body) != size:  # h11 enforces Content-Length; this guards the invariant
            raise _HttpError(HTTPStatus.BAD_REQUEST,
                             f"the body has {len(body)} bytes, Content-Length said {size}", CLOSE)
        return bytes(body)

    def _route(self, match: re.Match, body: bytes) -> bytes:
        """The JSON response body for a routed request (runs in a worker thread)."""
        model = self.registry.model(match["name"])
        version = None if match["version"] is None else int(match["version"])
        if match["label"] is not None:
            version = model.resolve(None, match["label"]).version
        suffix = match["suffix"]
        if suffix is None:
            return _dumps(status_json(model.status(version)))
        served = model.resolve(version, match["label"])
        if suffix == "/metadata":
            return _dumps({"model_spec": {"name": model.name, "signature_name": "",
                                          "version": str(served.version)},
                           "metadata": {"signature_def": json_format.MessageToDict(
                               signature_def_map(served), always_print_fields_with_no_presence=True,
                               preserving_proto_field_name=True)}})
        if suffix != ":predict":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"{suffix[1:]} is not served: these models have predict "
                               "signatures only; POST to :predict")
        request = parse_json(body)
        signature_name = request.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid('"signature_name" must be a string')
        inputs, row_format = decode_predict(request, served.input_specs(signature_name))
        del request  # the decoded JSON can be large: free it before the model runs
        _, outputs = served.predict(inputs, signature_name)
        return _dumps(encode_predict(outputs, row_format))


def parse_json(body: bytes) -> dict:
    """A request body as a JSON object, or INVALID_ARGUMENT saying why not. orjson parses a
    batch of images about three times faster than `json`; the standard parser reads what
    orjson refuses, since like TF Serving we accept NaN and Infinity literals (the signature
    then rejects them with a clear message)."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise invalid(f"JSON Parse error: {error}") from error
        except RecursionError as error:
            raise invalid("JSON Parse error: nested too deeply") from error
    if not isinstance(request, dict):
        raise invalid("JSON Parse error: the request body must be a JSON object")
    return request


def _dumps(payload: dict) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def _json(status: int, payload: dict, headers: dict | None = None) -> Response:
    return Response(_dumps(payload), status, headers, media_type="application/json")
