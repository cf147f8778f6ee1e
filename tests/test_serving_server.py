import dataclasses
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from serving.client import RestClient, ServingClientError
from serving.loadtest import main as loadtest_main
from serving.loadtest import run_load
from serving.registry import LoadedVersion
from serving.server import ModelServer
from serving.server import main as server_main

pytest_plugins = ["tests.serving_fixtures"]  # exported, server, trainer
SHAPE = (12, 12, 1)
MAX_REQUEST_BYTES = 200_000  # the shared server's limit



@pytest.fixture(scope="module")
def grpc_channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield channel


def call(server, method, path, body=None):
    """(status, decoded JSON) of one request; `body` is sent as JSON unless it is bytes."""
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
    data = body if isinstance(body, bytes | type(None)) else json.dumps(body).encode()
    connection.request(method, path, data)
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload


def images(n=3, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, *SHAPE)).astype(np.float32)


def softmax(trainer, x):
    return tf.nn.softmax(trainer.classifier(x, training=False)).numpy()


def test_rest_row_and_columnar_predictions_equal_the_in_process_model(server, trainer):
    x = images()
    expected = softmax(trainer, x)
    status, rows = call(server, "POST", "/v1/models/classifier:predict",
                        {"signature_name": "serving_default", "instances": x.tolist()})
    assert status == 200
    assert [sorted(row) for row in rows["predictions"]] == [["classes", "probabilities"]] * 3
    np.testing.assert_allclose([r["probabilities"] for r in rows["predictions"]], expected,
                               rtol=1e-5, atol=1e-6)
    assert [r["classes"] for r in rows["predictions"]] == expected.argmax(-1).tolist()
    status, columns = call(server, "POST", "/v1/models/classifier/versions/1:predict",
                           {"inputs": {"images": x.tolist()}})
    assert status == 200
    np.testing.assert_allclose(columns["outputs"]["probabilities"], expected, rtol=1e-5,
                               atol=1e-6)
    assert columns["outputs"]["classes"] == expected.argmax(-1).tolist()


def test_rest_generator_rows_name_each_input(server, exported):
    x, labels, seeds = images(2), [0, 2], [7, 8]
    status, rows = call(server, "POST", "/v1/models/generator:predict", {"instances": [
        {"images": x[i].tolist(), "labels": labels[i], "seed": seeds[i]} for i in range(2)]})
    assert status == 200
    serve = tf.saved_model.load(str(exported / "generator" / "1")).signatures["serving_default"]
    expected = serve(images=tf.constant(x), labels=tf.constant(labels, tf.int64),
                     seed=tf.constant(seeds, tf.int64))["adversarial_images"].numpy()
    np.testing.assert_allclose([r["adversarial_images"] for r in rows["predictions"]], expected,
                               atol=1e-6)


def test_grpc_predict_equals_the_in_process_model(server, trainer, grpc_channel):
    x = images()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "classifier"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(x))
    response = prediction_service_pb2_grpc.PredictionServiceStub(grpc_channel).Predict(request,
                                                                                       timeout=60)
    expected = softmax(trainer, x)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]), expected,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["classes"]),
                                  expected.argmax(-1))
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("classifier", 1, "serving_default")


def test_status_has_tf_servings_json_shape(server):
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    assert call(server, "GET", "/v1/models/classifier") == (200, expected)
    assert call(server, "GET", "/v1/models/generator/versions/1") == (200, expected)


def test_metadata_has_tf_servings_json_shape_on_rest_and_grpc(server, grpc_channel):
    status, body = call(server, "GET", "/v1/models/classifier/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "classifier", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    images_info = signature["inputs"]["images"]
    assert images_info["dtype"] == "DT_FLOAT"
    assert images_info["tensor_shape"] == {"dim": [{"size": s, "name": ""}
                                                   for s in ("-1", "12", "12", "1")],
                                           "unknown_rank": False}
    assert {k: v["dtype"] for k, v in signature["outputs"].items()} == {
        "probabilities": "DT_FLOAT", "classes": "DT_INT64"}

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "classifier"
    response = prediction_service_pb2_grpc.PredictionServiceStub(grpc_channel).GetModelMetadata(
        request, timeout=60)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    grpc_images = signatures.signature_def["serving_default"].inputs["images"]
    assert [d.size for d in grpc_images.tensor_shape.dim] == [-1, 12, 12, 1]

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "generator"
    statuses = model_service_pb2_grpc.ModelServiceStub(grpc_channel).GetModelStatus(
        status_request, timeout=60).model_version_status
    assert [(s.version, s.state) for s in statuses] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def _x(value=None, shape=(1, *SHAPE)):
    x = np.full(shape, 0.5).tolist()
    if value is not None:
        x[0][0][0][0] = value
    return x


BAD_REST_REQUESTS = [
    ("malformed JSON", "/v1/models/classifier:predict", b'{"instances": [', 400,
     "JSON Parse error"),
    ("no instances or inputs", "/v1/models/classifier:predict", {"signature_name": ""}, 400,
     '"instances".*"inputs"'),
    ("wrong shape", "/v1/models/classifier:predict", {"instances": _x(shape=(1, 28, 28, 1))},
     400, r"'images' has shape \[1, 28, 28, 1\].*\[-1, 12, 12, 1\]"),
    ("ragged rows", "/v1/models/classifier:predict", {"instances": [[0.5], [0.5, 0.5]]}, 400,
     "'images' is ragged"),
    ("wrong dtype", "/v1/models/classifier:predict", {"instances": [[["a"] * 1] * 12] * 12},
     400, "'images' must hold float32 numbers, got strings"),
    ("float labels", "/v1/models/generator:predict",
     {"inputs": {"images": _x(), "labels": [0.5], "seed": [1]}}, 400,
     "'labels' must hold int64 numbers"),
    ("NaN", "/v1/models/classifier:predict", b'{"instances": ' +
     json.dumps(_x(0.0)).replace("0.0", "NaN", 1).encode() + b"}", 400, "finite"),
    ("above 1", "/v1/models/classifier:predict", {"instances": _x(1.5)}, 400,
     r"images must be in \[0, 1\]"),
    ("below 0", "/v1/models/classifier:predict", {"instances": _x(-0.1)}, 400,
     r"images must be in \[0, 1\]"),
    ("label out of range", "/v1/models/generator:predict",
     {"inputs": {"images": _x(), "labels": [3], "seed": [1]}}, 400, "labels must be < 3"),
    ("unknown signature", "/v1/models/classifier:predict",
     {"signature_name": "nope", "instances": _x()}, 400, 'signature key "nope" not found'),
    ("unknown input", "/v1/models/classifier:predict", {"inputs": {"pixels": _x()}}, 400,
     "alias not found in signature: pixels"),
    ("unknown model", "/v1/models/resnet:predict", {"instances": _x()}, 404,
     r"Servable not found for request: Latest\(resnet\)"),
    ("unknown version", "/v1/models/classifier/versions/9:predict", {"instances": _x()}, 404,
     r"Specific\(classifier, 9\)"),
    ("unknown path", "/v2/models/classifier:predict", {"instances": _x()}, 404,
     "Malformed request"),
    ("oversized body", "/v1/models/classifier:predict",
     {"instances": _x(shape=(500, *SHAPE))}, 413, f"exceeds the limit of {MAX_REQUEST_BYTES}"),
]


@pytest.mark.parametrize("path,body,status,message",
                         [case[1:] for case in BAD_REST_REQUESTS],
                         ids=[case[0] for case in BAD_REST_REQUESTS])
def test_bad_rest_requests_get_the_right_status_and_reason(server, trainer, path, body, status,
                                                           message):
    got, payload = call(server, "POST", path, body)
    assert got == status
    assert set(payload) == {"error"}
    assert re.search(message, payload["error"]), payload["error"]
    ok, prediction = call(server, "POST", "/v1/models/classifier:predict", {"instances": _x()})
    assert ok == 200 and len(prediction["predictions"]) == 1  # still serving


def test_unknown_model_and_version_status_are_404(server):
    assert call(server, "GET", "/v1/models/resnet")[0] == 404
    status, body = call(server, "GET", "/v1/models/classifier/versions/4")
    assert status == 404 and "Could not find version 4 of model classifier" in body["error"]
    assert call(server, "GET", "/v1/models/classifier/versions/4/metadata")[0] == 404


@pytest.mark.parametrize("case", ["int images", "NaN", "unknown model", "unknown version",
                                  "oversized"])
def test_bad_grpc_requests_get_the_right_code_and_reason(server, grpc_channel, case):
    x = np.full((1, *SHAPE), 0.5, np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "classifier"
    expected, message = grpc.StatusCode.INVALID_ARGUMENT, None
    if case == "int images":
        x, message = x.astype(np.int64), "'images' has dtype int64 but the signature expects float"
    elif case == "NaN":
        x[0, 0, 0, 0], message = np.nan, "finite"
    elif case == "unknown model":
        request.model_spec.name, expected, message = "resnet", grpc.StatusCode.NOT_FOUND, "resnet"
    elif case == "unknown version":
        request.model_spec.version.value = 9
        expected, message = grpc.StatusCode.NOT_FOUND, r"Specific\(classifier, 9\)"
    else:
        x = np.full((500, *SHAPE), 0.5, np.float32)
        expected, message = grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(x))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc_channel)
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=60)
    assert error.value.code() == expected
    assert re.search(message, error.value.details()), error.value.details()
    good = predict_pb2.PredictRequest()
    good.model_spec.name = "classifier"
    good.inputs["images"].CopyFrom(tf.make_tensor_proto(np.full((1, *SHAPE), 0.5, np.float32)))
    assert stub.Predict(good, timeout=60).outputs["classes"].int64_val  # still serving


def test_warmup_requests_replay_on_load(exported):
    version = LoadedVersion("classifier", 1, exported / "classifier" / "1")
    assert version.warm_up() == 1


def test_new_version_folders_are_picked_up_without_restart(exported, tmp_path):
    base = tmp_path / "models"
    shutil.copytree(exported, base)
    config = text_format.Parse((exported / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    for entry in config.model_config_list.config:
        entry.base_path = str(base / entry.name)
        entry.version_labels["stable"] = 1
    (base / "models.config").write_text(text_format.MessageToString(config))
    with ModelServer(base / "models.config", rest_port=0, grpc_port=0,
                     poll_seconds=0.1) as server:
        assert call(server, "GET", "/v1/models/classifier")[1][
            "model_version_status"][0]["version"] == "1"
        assert call(server, "POST", "/v1/models/classifier/labels/stable:predict",
                    {"instances": _x()})[0] == 200
        status, body = call(server, "GET", "/v1/models/classifier/labels/canary")
        assert status == 404 and "Unrecognized servable version label: canary" in body["error"]
        staging = base / "classifier" / ".2.staging"
        shutil.copytree(base / "classifier" / "1", staging)
        os.replace(staging, base / "classifier" / "2")  # appears whole, as save_module does
        deadline = time.monotonic() + 60
        while call(server, "GET", "/v1/models/classifier")[1][
                "model_version_status"][0]["version"] != "2":
            assert time.monotonic() < deadline, "version 2 was not picked up"
            time.sleep(0.1)
        assert call(server, "POST", "/v1/models/classifier/versions/2:predict",
                    {"instances": _x()})[0] == 200
        assert call(server, "GET", "/v1/models/classifier/metadata")[1]["model_spec"][
            "version"] == "2"
        assert call(server, "POST", "/v1/models/classifier/versions/1:predict",
                    {"instances": _x()})[0] == 404

        broken = base / "classifier" / ".3.staging"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        os.replace(broken, base / "classifier" / "3")
        while len(call(server, "GET", "/v1/models/classifier")[1]["model_version_status"]) < 2:
            assert time.monotonic() < deadline, "the broken version 3 was not tried"
            time.sleep(0.1)
        failed, served = call(server, "GET", "/v1/models/classifier")[1]["model_version_status"]
        assert (failed["version"], failed["state"], served["version"], served["state"]) == (
            "3", "END", "2", "AVAILABLE")
        assert failed["status"]["error_code"] == "UNKNOWN" and failed["status"]["error_message"]
        assert call(server, "POST", "/v1/models/classifier:predict",
                    {"instances": _x()})[0] == 200  # version 2 keeps serving


def test_a_small_concurrent_load_has_no_errors(server):
    x = images(4)
    result = run_load(lambda: RestClient(f"http://127.0.0.1:{server.rest_port}"), "classifier",
                      x, requests=100, threads=8)
    assert result.errors == 0, result.first_error
    assert result.requests_per_second == pytest.approx(100 / result.seconds)
    assert result.images_per_second == pytest.approx(400 / result.seconds)


class _ScriptedClient:
    """Answers after `delay` seconds, but fails at once on every `fail_every`-th call."""

    def __init__(self, delay: float, fail_every: int):
        self.delay, self.fail_every, self.calls = delay, fail_every, 0

    def predict(self, model, inputs):
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise ServingClientError(503, f"call {self.calls} refused")
        time.sleep(self.delay)
        return {}


def test_load_test_counts_only_answered_requests_and_times_them():
    result = run_load(lambda: _ScriptedClient(0.02, fail_every=2), "m", images(2), requests=40,
                      threads=2)
    assert (result.requests, result.errors) == (40, 20)
    assert result.first_error == "ServingClientError: 503: call 2 refused"
    assert result.requests_per_second == pytest.approx(20 / result.seconds)  # not 40 / seconds
    assert result.images_per_second == pytest.approx(40 / result.seconds)
    assert 20 <= result.p50_ms < 20 + 200  # the answered calls' sleep, not the failures' 0 ms
    assert result.p99_ms >= result.p50_ms


def test_load_test_of_only_failures_prints_null_not_nan(capsys, monkeypatch):
    result = run_load(lambda: _ScriptedClient(0, fail_every=1), "m", images(1), requests=5,
                      threads=1)
    assert (result.errors, result.requests_per_second, result.p50_ms, result.p99_ms) == (
        5, 0, None, None)
    assert "NaN" not in json.dumps(dataclasses.asdict(result))
    with pytest.raises(SystemExit, match="cannot get classifier's input shape from "
                                         "http://127.0.0.1:9.*is the server running"):
        loadtest_main(["--rest", "http://127.0.0.1:9", "--requests", "1"])


def test_start_up_problems_end_in_one_line(exported, server, tmp_path):
    with pytest.raises(SystemExit, match=r"error: model config .*nope.config does not exist"):
        server_main(["--model-config", str(tmp_path / "nope.config")])
    (tmp_path / "bad.config").write_text("model_config_list { config { name: ")
    with pytest.raises(SystemExit, match="error: .*bad.config is not a ModelServerConfig"):
        server_main(["--model-config", str(tmp_path / "bad.config")])
    config = str(exported / "models.config")
    with pytest.raises(SystemExit, match=rf"error: cannot listen for REST on 127.0.0.1:"
                                         rf"{server.rest_port} .*pick another --rest-port"):
        server_main(["--model-config", config, "--rest-port", str(server.rest_port)])
    with pytest.raises(SystemExit, match=rf"error: cannot bind the gRPC server to 127.0.0.1:"
                                         rf"{server.grpc_port} .*another --grpc-port"):
        server_main(["--model-config", config, "--rest-port", "0",
                     "--grpc-port", str(server.grpc_port)])


@pytest.mark.slow
def test_command_line_server_binds_loopback_and_serves(exported):
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--model-config", str(exported / "models.config"),
         "--rest-port", "0", "--grpc-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "REST API at" not in line:
            assert time.monotonic() < deadline and process.poll() is None, "server did not start"
            line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)\s+gRPC at 127\.0\.0\.1:(\d+)", line)
        assert match, line
        client = RestClient(f"http://127.0.0.1:{match[1]}")
        assert client.status("classifier")["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        process.terminate()
        process.wait(timeout=30)
