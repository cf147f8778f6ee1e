"""TF Serving's REST API over the standard library's ThreadingHTTPServer.

    GET  /v1/models/NAME[/versions/V | /labels/L]            model status
    GET  /v1/models/NAME[/versions/V | /labels/L]/metadata   signatures
    POST /v1/models/NAME[/versions/V | /labels/L]:predict    {"instances": …} or {"inputs": …}

Bodies and errors are shaped as TF Serving shapes them (`{"predictions": …}`, `{"outputs": …}`,
`{"error": "…"}`), with its mapping of status codes to HTTP statuses.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
from google.protobuf import json_format

from serving.registry import (
    ModelRegistry,
    ServingError,
    invalid,
    signature_def_map,
    status_response,
)

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


def _to_array(name: str, value, dtype: np.dtype) -> np.ndarray:
    """A JSON value as an array of the signature's dtype, or a message naming what is wrong."""
    try:
        array = np.asarray(value)
    except ValueError as error:  # ragged nested lists
        raise invalid(f"input '{name}' is ragged: every row must have the same shape "
                      f"({error})") from error
    kind, wanted = array.dtype.kind, np.dtype(dtype)
    if kind not in "iuf" or (wanted.kind in "iu" and kind == "f"):
        got = {"U": "strings", "O": "mixed or null values", "b": "booleans",
               "f": "non-integer numbers"}.get(kind, array.dtype.name)
        raise invalid(f"input '{name}' must hold {wanted.name} numbers, got {got}")
    return array.astype(wanted)


def _check_batch(inputs: dict[str, np.ndarray]) -> None:
    sizes = {name: value.shape[0] if value.ndim else None for name, value in inputs.items()}
    if len(set(sizes.values())) > 1:
        raise invalid(f"all inputs must have the same 0-th dimension (batch), got {sizes}")


def decode_predict(body: dict, dtypes: dict[str, np.dtype]) -> tuple[dict[str, np.ndarray], bool]:
    """The named input arrays of a predict body, and whether it used the row format."""
    if ("instances" in body) == ("inputs" in body):
        raise invalid('a predict request needs exactly one of "instances" (row format) or '
                      '"inputs" (columnar format)')
    names = sorted(dtypes)
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise invalid('"instances" must be a non-empty list with one entry per example')
        if all(isinstance(row, dict) for row in rows):
            for index, row in enumerate(rows):
                if set(row) != set(names):
                    raise invalid(f"instance {index} must have exactly the keys {names}, "
                                  f"it has {sorted(row)}")
            inputs = {n: _to_array(n, [row[n] for row in rows], dtypes[n]) for n in names}
            _check_batch(inputs)
            return inputs, True
        if len(names) != 1:
            raise invalid(f"the signature takes several inputs {names}: each instance must be "
                          "an object naming them")
        return {names[0]: _to_array(names[0], rows, dtypes[names[0]])}, True
    columns = body["inputs"]
    if isinstance(columns, dict):
        unknown = sorted(set(columns) - set(names))
        if unknown:
            raise invalid(f"input tensor alias not found in signature: {', '.join(unknown)}. "
                          f"Inputs expected to be in the set {{{', '.join(names)}}}.")
        return {n: _to_array(n, v, dtypes[n]) for n, v in columns.items()}, False
    if len(names) != 1:
        raise invalid(f'the signature takes several inputs {names}: "inputs" must be an object '
                      "naming them")
    return {names[0]: _to_array(names[0], columns, dtypes[names[0]])}, False


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
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "outputs do not share a batch size; use the columnar \"inputs\" format")
    return {"predictions": [{name: value[i] for name, value in lists.items()}
                            for i in range(batch.pop())]}


def status_json(states: list[tuple[int, str, str]]) -> dict:
    """TF Serving's model status body, via its GetModelStatusResponse proto."""
    return json_format.MessageToDict(status_response(states),
                                     always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)


class RestHandler(BaseHTTPRequestHandler):
    """One HTTP request against `server.registry`; keep-alive (HTTP/1.1) for load."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else keep-alive replies wait ~40 ms on delayed ACKs
    server_version = "l2lda-serving"
    server: RestServer

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass  # per-request lines would drown the server's own log

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.headers.get("Content-Length", "0") != "0" or self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # an unread body must not be taken for a request
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def _handle(self, method: str) -> None:
        try:
            self._send(HTTPStatus.OK, self._route(method))
        except ServingError as error:
            self._send(HTTP_STATUS.get(error.code, HTTPStatus.INTERNAL_SERVER_ERROR),
                       {"error": error.message})
        except _HttpError as error:
            self._send(error.status, {"error": error.message})
        except Exception as error:  # answer rather than drop the connection; the server lives on
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: "
                                                                   f"{error}"})

    def _route(self, method: str) -> dict:
        match = PATH.match(self.path.split("?", 1)[0])
        body = self._read_body() if method == "POST" else b""
        suffix = match and match["suffix"]
        if not match or (method == "GET") != (suffix in (None, "/metadata")):
            raise _HttpError(HTTPStatus.NOT_FOUND, f"Malformed request: {method} {self.path}")
        registry = self.server.registry
        model = registry.model(match["name"])
        version = None if match["version"] is None else int(match["version"])
        if match["label"] is not None:
            version = model.resolve(None, match["label"]).version
        if suffix is None:
            return status_json(model.status(version))
        served = model.resolve(version, match["label"])
        if suffix == "/metadata":
            return {"model_spec": {"name": model.name, "signature_name": "",
                                   "version": str(served.version)},
                    "metadata": {"signature_def": json_format.MessageToDict(
                        signature_def_map(served), always_print_fields_with_no_presence=True,
                        preserving_proto_field_name=True)}}
        if suffix != ":predict":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"{suffix[1:]} is not served: these models have predict "
                               "signatures only; POST to :predict")
        request = self._parse_json(body)
        signature_name = request.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid('"signature_name" must be a string')
        dtypes = served.input_dtypes(signature_name)
        inputs, row_format = decode_predict(request, dtypes)
        _, outputs = served.predict(inputs, signature_name)
        return encode_predict(outputs, row_format)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED,
                             "chunked bodies are not accepted: send a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError as error:
            self.close_connection = True
            raise _HttpError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from error
        limit = self.server.max_request_bytes
        if length < 0:
            self.close_connection = True
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"Content-Length is negative: {length}")
        if length > limit:
            self.close_connection = True  # the unread body must not be taken for a request
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"request body of {length} bytes exceeds the limit of {limit} bytes")
        return self.rfile.read(length)

    @staticmethod
    def _parse_json(body: bytes) -> dict:
        try:
            # Like TF Serving, accepts NaN and Infinity literals; the signature rejects them.
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise invalid(f"JSON Parse error: {error}") from error
        if not isinstance(request, dict):
            raise invalid("JSON Parse error: the request body must be a JSON object")
        return request

    def _send(self, status: HTTPStatus, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class RestServer(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the registry and the request-size limit."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: ModelRegistry, max_request_bytes: int):
        self.registry = registry
        self.max_request_bytes = max_request_bytes
        super().__init__(address, RestHandler)
