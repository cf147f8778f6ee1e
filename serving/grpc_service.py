"""TF Serving's gRPC API from the tensorflow-serving-api protos: PredictionService.Predict and
GetModelMetadata, ModelService.GetModelStatus. Other methods answer UNIMPLEMENTED."""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
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
    signature_def_map,
    status_response,
)


def _served(registry: ModelRegistry, spec) -> LoadedVersion:
    """The version a request's ModelSpec names: `version`, `version_label` or the newest."""
    model = registry.model(spec.name)
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    return model.resolve(version, spec.version_label if choice == "version_label" else None)


def _inputs(request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
    inputs = {}
    for name, proto in request.inputs.items():
        try:
            inputs[name] = tf.make_ndarray(proto)
        except (TypeError, ValueError) as error:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{name}' is not a valid TensorProto: {error}") from error
    return inputs


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def Predict(self, request, context):  # noqa: N802 - the proto's method name
        try:
            served = _served(self.registry, request.model_spec)
            signature_name, outputs = served.predict(_inputs(request),
                                                     request.model_spec.signature_name)
            unknown = sorted(set(request.output_filter) - set(outputs))
            if unknown:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: "
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
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "metadata_field must be ['signature_def'] (the only metadata "
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
                workers: int = 8) -> tuple[grpc.Server, int]:
    """A started-on-`start()` gRPC server with both services; returns it and the bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", max_request_bytes),
                                  ("grpc.max_send_message_length", -1)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(registry), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(registry), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    return server, port
