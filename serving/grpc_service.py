"""TF Serving's gRPC API from the tensorflow-serving-api protos: PredictionService.Predict and
GetModelMetadata, ModelService.GetModelStatus. Other methods answer UNIMPLEMENTED."""

from __future__ import annotations

import math
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.registry import (
    LoadedVersion,
    ModelRegistry,
    ServingError,
    invalid,
    signature_def_map,
    status_response,
)


def _served(registry: ModelRegistry, spec) -> LoadedVersion:
    """The version a request's ModelSpec names: `version`, `version_label` or the newest."""
    model = registry.model(spec.name)
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    return model.resolve(version, spec.version_label if choice == "version_label" else None)


def _values_present(proto: tensor_pb2.TensorProto) -> int:
    """How many values a TensorProto carries: its `tensor_content` bytes count in item sizes;
    else the length of its typed value field (`float_val`, `int64_val`, …)."""
    return max((len(value) for field, value in proto.ListFields()
                if field.name.endswith("_val")), default=0)


def _inputs(request: predict_pb2.PredictRequest, served: LoadedVersion,
            max_elements: int) -> dict[str, np.ndarray]:
    """The request's input arrays, decoded only after each TensorProto's declared dtype and
    shape fit the signature and `max_elements`, and its values match its shape: a few bytes
    declaring a huge shape must not make the server allocate it."""
    specs = served.check_names(request.inputs, request.model_spec.signature_name)
    declared = {}
    for name, proto in request.inputs.items():
        try:
            dtype = tf.as_dtype(proto.dtype)
        except TypeError as error:
            raise invalid(f"input '{name}' has an unknown dtype enum {proto.dtype}") from error
        shape = tuple(d.size for d in proto.tensor_shape.dim)
        if proto.tensor_shape.unknown_rank or any(d < 0 for d in shape):
            raise invalid(f"input '{name}' must have a known shape, got {list(shape)}")
        specs[name].check_declared(dtype, shape)
        declared[name] = (dtype, shape, math.prod(shape))
    total = sum(count for _, _, count in declared.values())
    if total > max_elements:
        raise invalid(f"the request declares {total} values in all, more than the limit of "
                      f"{max_elements} (--max-request-bytes / 4); send smaller batches")
    inputs = {}
    for name, proto in request.inputs.items():
        dtype, shape, count = declared[name]
        if proto.tensor_content:
            present, expected = len(proto.tensor_content), count * dtype.size
            unit = "bytes of tensor_content"
        else:
            # TensorFlow repeats the last value to fill the shape; one value is the common use
            # (a constant tensor), so that is allowed within `max_elements`.
            present, expected, unit = _values_present(proto), count, "values"
            if present == 1 and count > 1:
                expected = 1
        if present != expected:
            raise invalid(f"input '{name}' declares shape {list(shape)} ({expected} {unit}) "
                          f"but carries {present}")
        try:
            inputs[name] = tf.make_ndarray(proto)
        except (TypeError, ValueError) as error:
            raise invalid(f"input '{name}' is not a valid TensorProto: {error}") from error
    return inputs


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry, max_elements: int):
        self.registry, self.max_elements = registry, max_elements

    def Predict(self, request, context):  # noqa: N802 - the proto's method name
        try:
            served = _served(self.registry, request.model_spec)
            signature_name, outputs = served.predict(
                _inputs(request, served, self.max_elements), request.model_spec.signature_name)
            unknown = sorted(set(request.output_filter) - set(outputs))
            if unknown:
                raise invalid(f"output tensor alias not found in signature: "
                              f"{', '.join(unknown)}; outputs are {sorted(outputs)}")
        except ServingError as error:
            context.abort(error.code, error.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = served.name
        response.model_spec.version.value = served.version
        response.model_spec.signature_name = signature_name
        for name, value in outputs.items():
            if not request.output_filter or name in request.output_filter:
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise invalid("metadata_field must be ['signature_def'] (the only metadata "
                              f"served), got {list(request.metadata_field)}")
            served = _served(self.registry, request.model_spec)
        except ServingError as error:
            context.abort(error.code, error.message)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = served.name
        response.model_spec.version.value = served.version
        response.metadata["signature_def"].Pack(signature_def_map(served))
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def GetModelStatus(self, request, context):  # noqa: N802
        spec = request.model_spec
        try:
            model = self.registry.model(spec.name)
            states = model.status(spec.version.value if spec.HasField("version") else None)
        except ServingError as error:
            context.abort(error.code, error.message)
        return status_response(states)


def grpc_server(registry: ModelRegistry, address: str, max_request_bytes: int,
                workers: int = 8, max_concurrent_rpcs: int = 64) -> tuple[grpc.Server, int]:
    """A started-on-`start()` gRPC server with both services; returns it and the bound port.

    Memory is bounded by `max_concurrent_rpcs` messages of at most `max_request_bytes` (calls
    beyond are refused RESOURCE_EXHAUSTED rather than queued without end), each decoded to at
    most `max_request_bytes / 4` values."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", max_request_bytes),
                                  ("grpc.max_send_message_length", -1),
                                  ("grpc.so_reuseport", 0)],
                         maximum_concurrent_rpcs=max_concurrent_rpcs)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(registry, max(1, max_request_bytes // 4)), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(registry), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:  # grpcio raises instead of returning 0 since 1.56
        raise OSError(f"cannot bind the gRPC server to {address} (is the port in use? pick "
                      "another --grpc-port)") from error
    if port == 0:
        raise OSError(f"cannot bind the gRPC server to {address} (is the port in use? pick "
                      "another --grpc-port)")
    return server, port
