"""A client for TF Serving's REST and gRPC APIs: works against `serving.server` and the real
`tensorflow_model_server` alike, since it speaks only the documented wire formats.

    python -m serving.client [--rest URL | --grpc HOST:PORT] classify IMAGE...
    python -m serving.client [--rest URL | --grpc HOST:PORT] attack IMAGE... --labels L... --out DIR
    python -m serving.client [--rest URL | --grpc HOST:PORT] metadata MODEL

IMAGE is a PNG (or any format Pillow reads) or a .npy array ([H,W], [H,W,C] or [N,H,W,C];
uint8 in 0..255 or floats in [0, 1]). Python: `RestClient(url).classify(images)`.
"""

from __future__ import annotations

import abc
import argparse
import http.client
import json
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson

DEFAULT_REST = "http://127.0.0.1:8501"


class ServingClientError(Exception):
    """The server refused a request; `status` is the HTTP status or gRPC code name."""

    def __init__(self, status, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class _Client(abc.ABC):
    """What both transports share: the signature's input specs, classify and attack."""

    @abc.abstractmethod
    def predict(self, model: str, inputs: dict[str, np.ndarray], version: int | None = None,
                signature_name: str = "") -> dict[str, np.ndarray]:
        """The signature's outputs for `inputs`, by output name."""

    @abc.abstractmethod
    def metadata(self, model: str, version: int | None = None) -> dict:
        """The model's metadata in TF Serving's JSON shape."""

    def input_shape(self, model: str, input_name: str = "images",
                    signature_name: str = "serving_default") -> tuple[int, ...]:
        """A signature input's shape without the batch dimension, from the model's metadata."""
        signatures = self.metadata(model)["metadata"]["signature_def"]["signature_def"]
        dims = signatures[signature_name]["inputs"][input_name]["tensor_shape"]["dim"]
        return tuple(int(d["size"]) for d in dims[1:])

    def classify(self, images: np.ndarray, model: str = "classifier",
                 version: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Classes [N] and class probabilities [N, K] for float images in [0, 1]."""
        out = self.predict(model, {"images": np.asarray(images, np.float32)}, version)
        return out["classes"], out["probabilities"]

    def attack(self, images: np.ndarray, labels, seeds=None, model: str = "generator",
               version: int | None = None) -> np.ndarray:
        """The generator's adversarial images for (images, labels); `seeds` (one per image,
        default 0, 1, …) pick the attack, so the same seed gives the same images."""
        images = np.asarray(images, np.float32)
        seeds = np.arange(len(images)) if seeds is None else seeds
        out = self.predict(model, {"images": images,
                                   "labels": np.asarray(labels, np.int64).reshape(-1),
                                   "seed": np.asarray(seeds, np.int64).reshape(-1)}, version)
        return out["adversarial_images"]


_NUMPY_DTYPES = {"DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_HALF": np.float16,
                 "DT_INT64": np.int64, "DT_INT32": np.int32, "DT_INT16": np.int16,
                 "DT_INT8": np.int8, "DT_UINT8": np.uint8, "DT_BOOL": np.bool_}


_ORJSON_DTYPES = {np.dtype(t) for t in (np.float32, np.float64, np.int64, np.int32, np.int16,
                                       np.int8, np.uint8, np.bool_)}


def _json_ready(value) -> np.ndarray | list:
    """An input as orjson serializes it fast (a C-contiguous array of a numeric dtype), or as
    a list for anything else."""
    array = np.asarray(value)
    if array.dtype in _ORJSON_DTYPES:
        return np.ascontiguousarray(array)
    return array.tolist()


class RestClient(_Client):
    """REST client with one keep-alive connection per thread (safe to share between threads)."""

    def __init__(self, url: str = DEFAULT_REST, timeout: float = 60.0):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url, self.timeout, self._parts = url, timeout, parts
        self._local = threading.local()
        self._dtypes: dict[tuple, dict[str, np.dtype]] = {}

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self._local, "connection", None) is None:
            kind = (http.client.HTTPSConnection if self._parts.scheme == "https"
                    else http.client.HTTPConnection)
            self._local.connection = kind(self._parts.hostname, self._parts.port,
                                          timeout=self.timeout)
        return self._local.connection

    def request(self, method: str, path: str, body: dict | bytes | None = None) -> dict:
        """One call; the decoded JSON response, or ServingClientError with the server's error.
        A dict body may hold numpy arrays (sent as nested lists)."""
        data = body if isinstance(body, bytes | type(None)) else orjson.dumps(
            body, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            connection = self._connection()
            try:
                connection.request(method, self._parts.path.rstrip("/") + path, data, headers)
                response = connection.getresponse()
                payload = response.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                connection.close()
                self._local.connection = None
                if attempt:
                    raise
        if response.will_close:
            connection.close()
            self._local.connection = None
        try:
            decoded = orjson.loads(payload)
        except orjson.JSONDecodeError:
            decoded = {"error": payload.decode(errors="replace")}
        if not isinstance(decoded, dict):
            decoded = {"error": str(decoded)}
        if response.status != 200:
            raise ServingClientError(response.status, decoded.get("error", str(decoded)))
        return decoded

    @staticmethod
    def _model_path(model: str, version: int | None) -> str:
        return f"/v1/models/{model}" + ("" if version is None else f"/versions/{version}")

    def status(self, model: str, version: int | None = None) -> dict:
        return self.request("GET", self._model_path(model, version))

    def metadata(self, model: str, version: int | None = None) -> dict:
        return self.request("GET", self._model_path(model, version) + "/metadata")

    def predict(self, model: str, inputs: dict[str, np.ndarray], version: int | None = None,
                signature_name: str = "") -> dict[str, np.ndarray]:
        """Columnar ("inputs") predict; outputs as arrays by name, in the signature's dtypes
        (as gRPC returns them: JSON alone would make every float a float64)."""
        body = {"inputs": {name: _json_ready(value) for name, value in inputs.items()}}
        if signature_name:
            body["signature_name"] = signature_name
        outputs = self.request("POST", self._model_path(model, version) + ":predict",
                               body)["outputs"]
        if not isinstance(outputs, dict):  # a single-output signature answers bare
            outputs = {"output": outputs}
        dtypes = self._output_dtypes(model, version, signature_name or "serving_default")
        return {name: np.asarray(value, dtypes.get(name)) for name, value in outputs.items()}

    def _output_dtypes(self, model: str, version: int | None,
                       signature_name: str) -> dict[str, np.dtype]:
        """The signature's output dtypes, from its metadata (fetched once per model)."""
        key = (model, version, signature_name)
        if key not in self._dtypes:
            signature = self.metadata(model, version)["metadata"]["signature_def"][
                "signature_def"].get(signature_name, {})
            self._dtypes[key] = {name: _NUMPY_DTYPES[info["dtype"]]
                                 for name, info in signature.get("outputs", {}).items()
                                 if info.get("dtype") in _NUMPY_DTYPES}
        return self._dtypes[key]


class GrpcClient(_Client):
    """gRPC client over the tensorflow-serving-api stubs."""

    def __init__(self, target: str = "127.0.0.1:8500", timeout: float = 60.0,
                 max_message_bytes: int = 64 * 1024 * 1024):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.target, self.timeout = target, timeout
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)])
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingClientError(error.code().name, error.details()) from error

    @staticmethod
    def _spec(spec, model: str, version: int | None, signature_name: str = "") -> None:
        spec.name = model
        if version is not None:
            spec.version.value = version
        if signature_name:
            spec.signature_name = signature_name

    def predict(self, model: str, inputs: dict[str, np.ndarray], version: int | None = None,
                signature_name: str = "") -> dict[str, np.ndarray]:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, signature_name)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
        response = self._call(self._predictions.Predict, request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def metadata(self, model: str, version: int | None = None) -> dict:
        """GetModelMetadata as the same JSON the REST API returns."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version)
        response = self._call(self._predictions.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return {"model_spec": {"name": response.model_spec.name, "signature_name": "",
                               "version": str(response.model_spec.version.value)},
                "metadata": {"signature_def": json_format.MessageToDict(
                    signatures, always_print_fields_with_no_presence=True,
                    preserving_proto_field_name=True)}}

    def status(self, model: str, version: int | None = None) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version)
        response = self._call(self._models.GetModelStatus, request)
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True,
                                         preserving_proto_field_name=True)


def load_images(paths: list[str | Path], image_shape: tuple[int, ...]) -> np.ndarray:
    """Float32 images in [0, 1], shaped [N, *image_shape], from image files and .npy arrays."""
    return load_named_images(paths, image_shape)[0]


def load_named_images(paths: list[str | Path],
                      image_shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """`load_images` and a display name per image: the file's path, or `FILE[i]` for the
    i-th image of a .npy batch."""
    batches, names = [], []
    for path in map(Path, paths):
        array = _load_image_file(path, image_shape)
        batches.append(array)
        names += [str(path)] if len(array) == 1 else [f"{path}[{i}]" for i in range(len(array))]
    return np.concatenate(batches), names


def _load_image_file(path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image

    height, width, channels = image_shape
    if path.suffix == ".npy":
        array = np.load(path)
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
        if array.ndim == len(image_shape) - 1 and channels == 1:
            array = array[..., None]
        if array.ndim == len(image_shape):
            array = array[None]
    else:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            array = np.asarray(image, np.float32)[None] / 255.0
        if channels == 1:
            array = array[..., None]
    if tuple(array.shape[1:]) != tuple(image_shape):
        raise ValueError(f"{path}: images of shape {list(array.shape[1:])}, the model takes "
                         f"{list(image_shape)} (height, width, channels)")
    return array.astype(np.float32)


def save_images(images: np.ndarray, paths: list[Path]) -> None:
    """Writes float images in [0, 1] as 8-bit PNGs."""
    from PIL import Image

    for image, path in zip(images, paths):
        pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rest", default=None, help=f"REST base URL (default {DEFAULT_REST})")
    where.add_argument("--grpc", default=None, help="gRPC target HOST:PORT, e.g. 127.0.0.1:8500")
    parser.add_argument("--version", type=int, default=None, help="model version (default newest)")
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("classify", help="print class and probability per image")
    classify.add_argument("images", nargs="+")
    classify.add_argument("--model", default="classifier")
    attack = commands.add_parser("attack", help="save the generator's adversarial images")
    attack.add_argument("images", nargs="+")
    attack.add_argument("--labels", type=int, nargs="+", required=True,
                        help="true class of each image (one, or one per image)")
    attack.add_argument("--seed", type=int, default=0, help="first seed; image i gets seed+i")
    attack.add_argument("--out", required=True, help="directory for the adversarial PNGs")
    attack.add_argument("--model", default="generator")
    attack.add_argument("--classifier", default="classifier",
                        help="model to classify the adversarial images with ('' to skip)")
    metadata = commands.add_parser("metadata", help="print a model's signatures (JSON)")
    metadata.add_argument("model")
    args = parser.parse_args(argv)

    client = GrpcClient(args.grpc) if args.grpc else RestClient(args.rest or DEFAULT_REST)
    try:
        if args.command == "metadata":
            print(json.dumps(client.metadata(args.model, args.version), indent=2))
            return
        images, names = load_named_images(args.images, client.input_shape(args.model))
        if args.command == "classify":
            classes, probabilities = client.classify(images, args.model, args.version)
            for name, label, p in zip(names, classes, probabilities):
                print(f"{name}: class {int(label)} (probability {p[label]:.3f})")
            return
        labels = np.asarray(args.labels, np.int64)
        if len(labels) not in (1, len(images)):
            raise ValueError(f"give one label, or one per image ({len(images)}); "
                             f"got {len(labels)}")
        labels = np.broadcast_to(labels, (len(images),))
        seeds = args.seed + np.arange(len(images))
        adversarial = client.attack(images, labels, seeds, args.model, args.version)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"{i:04d}_{Path(name).stem.replace('[', '_').rstrip(']')}_adv.png"
                 for i, name in enumerate(names)]
        save_images(adversarial, paths)
        np.save(out / "adversarial_images.npy", adversarial)
        verdicts = [""] * len(images)
        if args.classifier:
            classes, probabilities = client.classify(adversarial, args.classifier)
            verdicts = [f", classified {int(c)} (probability {p[c]:.3f})"
                        for c, p in zip(classes, probabilities)]
        for name, label, path, verdict in zip(names, labels, paths, verdicts):
            print(f"{name}: label {int(label)} -> {path}{verdict}")
    except ServingClientError as error:
        sys.exit(f"server refused the request: {error}")
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
