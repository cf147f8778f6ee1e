"""The models a server serves: read from a ModelServerConfig, newest version of each loaded,
base paths polled for new versions, and `predict` with TF Serving's checks and error codes.

Shared by the REST and gRPC front ends so a request fails the same way on both. As in TF
Serving's default version policy (latest, one version), a newer version folder replaces the one
being served once it has loaded and its warm-up requests have run; until then the old one serves.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from l2lda_tf.export import WARMUP_FILE, versions

log = logging.getLogger("serving")
DEFAULT_SIGNATURE = "serving_default"
MAX_LOAD_ATTEMPTS = 5  # as tensorflow_model_server's --max_num_load_retries default


class ServingError(Exception):
    """A request the server refuses, with the gRPC status code TF Serving would return."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _tf_error_message(error: tf.errors.OpError) -> str:
    """The line of a TensorFlow error that holds the failed check's message (the signature's
    `tf.debugging` text), without the graph internals around it."""
    for line in error.message.splitlines():
        line = line.strip()
        if not line or line.startswith(("Graph execution error", "Detected at node", "<stack",
                                        "[[", "File ")):
            continue
        assertion = re.match(r"assertion failed: \[(.*?)\] \[", line)
        if assertion:
            return assertion[1]
        return re.sub(r"\s*\[\[\{\{.*$|\s*\[Op:.*$", "", line)
    return error.message


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: tf.DType
    shape: tuple[int | None, ...]

    def check(self, value: np.ndarray) -> None:
        """Rejects a value whose dtype or shape the signature cannot take."""
        self.check_declared(tf.as_dtype(value.dtype), value.shape)

    def check_declared(self, dtype: tf.DType, shape: tuple[int, ...]) -> None:
        """The same check on a dtype and shape alone, so a request can be refused before its
        values are decoded."""
        if dtype != self.dtype:
            raise invalid(f"input '{self.name}' has dtype {dtype.name} but the signature "
                          f"expects {self.dtype.name}")
        expected = [-1 if d is None else d for d in self.shape]
        if len(shape) != len(self.shape) or any(
                d is not None and d != actual for d, actual in zip(self.shape, shape)):
            raise invalid(f"input '{self.name}' has shape {list(shape)} but the signature "
                          f"expects {expected} (-1: any size)")


def _input_specs(signature: meta_graph_pb2.SignatureDef) -> dict[str, InputSpec]:
    specs = {}
    for name, info in signature.inputs.items():
        shape = tuple(None if d.size < 0 else d.size for d in info.tensor_shape.dim)
        specs[name] = InputSpec(name, tf.as_dtype(info.dtype), shape)
    return specs


class LoadedVersion:
    """One SavedModel version: its signatures (callable, and as SignatureDef protos for
    metadata). Calls are thread-safe: restored signatures are stateless graph functions."""

    def __init__(self, name: str, version: int, path: Path):
        self.name, self.version, self.path = name, version, path
        saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        self.signature_defs = saved_model.meta_graphs[0].signature_def
        self._module = tf.saved_model.load(str(path))
        self._functions = dict(self._module.signatures)
        self._inputs = {key: _input_specs(self.signature_defs[key]) for key in self._functions}

    def _signature_key(self, signature_name: str) -> str:
        key = signature_name or DEFAULT_SIGNATURE
        if key not in self._functions:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{key}" not found; this model has '
                               f"{sorted(self._functions)}")
        return key

    def input_specs(self, signature_name: str = "") -> dict[str, InputSpec]:
        """The signature's inputs by name (dtype and shape, -1 dimensions as None)."""
        return self._inputs[self._signature_key(signature_name)]

    def input_dtypes(self, signature_name: str = "") -> dict[str, np.dtype]:
        """The signature's input names and dtypes, to read JSON values into."""
        return {name: spec.dtype.as_numpy_dtype
                for name, spec in self.input_specs(signature_name).items()}

    def predict(self, inputs: dict[str, np.ndarray],
                signature_name: str = "") -> tuple[str, dict[str, np.ndarray]]:
        """Runs a signature on named inputs; returns (signature name, outputs)."""
        key = self._signature_key(signature_name)
        specs = self.check_names(inputs, signature_name)
        for name, value in inputs.items():
            specs[name].check(value)
        try:
            outputs = self._functions[key](**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.OpError as error:
            code = grpc.StatusCode.INVALID_ARGUMENT
            for status in grpc.StatusCode:
                if status.value[0] == error.error_code:
                    code = status
            raise ServingError(code, _tf_error_message(error)) from error
        return key, {k: v.numpy() for k, v in outputs.items()}

    def check_names(self, names, signature_name: str = "") -> dict[str, InputSpec]:
        """Refuses a request whose input names are not exactly the signature's; returns the
        signature's input specs."""
        key = self._signature_key(signature_name)
        specs = self._inputs[key]
        unknown = sorted(set(names) - set(specs))
        if unknown:
            raise invalid(f"input tensor alias not found in signature: {', '.join(unknown)}. "
                          f"Inputs expected to be in the set {{{', '.join(sorted(specs))}}}.")
        missing = sorted(set(specs) - set(names))
        if missing:
            raise invalid(f"missing input(s) {', '.join(missing)}; signature '{key}' takes "
                          f"{{{', '.join(sorted(specs))}}}")
        return specs

    def warm_up(self) -> int:
        """Replays the export's TF Serving warm-up requests; returns how many ran."""
        path = self.path / WARMUP_FILE
        if not path.exists():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(path)):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if entry.WhichOneof("log_type") != "predict_log":
                raise ValueError(f"{path}: only predict warm-up requests are supported")
            request = entry.predict_log.request
            self.predict({k: tf.make_ndarray(v) for k, v in request.inputs.items()},
                         request.model_spec.signature_name)
            count += 1
        return count


def _is_complete(version_dir: Path) -> bool:
    return (version_dir / "saved_model.pb").exists()


def _fingerprint(version_dir: Path) -> tuple:
    """What a version folder holds (paths, sizes, modification times): a failed version is
    retried once this changes, say when a copy that was still running completes."""
    entries = []
    for root, dirs, files in os.walk(version_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            try:
                stat = os.stat(path)
            except OSError:  # removed while we walk: the next poll sees the change
                continue
            entries.append((os.path.relpath(path, version_dir), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def refreeze_heap() -> None:
    """Collects garbage, then moves every object alive into the permanent generation
    (`gc.freeze`), so later full collections skip the loaded models' object graph (a full
    collection over it stalls a request by ~200 ms). Unfreezing first lets a replaced
    version's cycles be collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ServedModel:
    """One configured model: serves its newest complete version folder."""

    def __init__(self, name: str, base_path: Path, labels: dict[str, int] | None = None):
        self.name, self.base_path, self.labels = name, base_path, dict(labels or {})
        self._lock = threading.Lock()
        self._current: LoadedVersion | None = None
        # version → (error, attempts, the folder's fingerprint when it last failed)
        self._failed: dict[int, tuple[str, int, tuple]] = {}

    def poll(self) -> bool:
        """Loads the newest complete version if it is not the one served (a newer folder, or the
        served one deleted); keeps serving the old one if the new one fails to load. A version
        that failed MAX_LOAD_ATTEMPTS times is tried again once its folder changes. Called from
        one thread at a time (the poller); returns whether the served version changed."""
        with self._lock:
            current = self._current
            failed = dict(self._failed)
        given_up = set()
        for version, (_, attempts, fingerprint) in failed.items():
            if attempts < MAX_LOAD_ATTEMPTS:
                continue
            if _fingerprint(self.base_path / str(version)) == fingerprint:
                given_up.add(version)
            else:
                log.info("%s version %d changed on disk; trying it again", self.name, version)
                with self._lock:
                    self._failed.pop(version, None)
        available = [v for v in versions(self.base_path)
                     if _is_complete(self.base_path / str(v)) and v not in given_up]
        target = max(available, default=None)
        if target is None:
            if current is not None:
                log.warning("%s: no version left under %s; unloading", self.name, self.base_path)
            with self._lock:
                self._current = None
            return current is not None
        if current is not None and current.version == target:
            return False
        path = self.base_path / str(target)
        fingerprint = _fingerprint(path)
        try:
            loaded = LoadedVersion(self.name, target, path)
            warmed = loaded.warm_up()
        except Exception as error:  # a broken export must not take the server down
            log.error("%s version %d failed to load: %s", self.name, target, error)
            with self._lock:
                attempts = self._failed.get(target, ("", 0, ()))[1] + 1
                self._failed[target] = (f"{type(error).__name__}: {error}", attempts,
                                        fingerprint)
            return False
        with self._lock:
            self._current = loaded
            self._failed.pop(target, None)
        log.info("serving %s version %d (%d warm-up requests)", self.name, target, warmed)
        return True

    def resolve(self, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """The loaded version a request names (newest if none), or NOT_FOUND."""
        if label is not None:
            if label not in self.labels:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Unrecognized servable version label: {label}")
            version = self.labels[label]
        with self._lock:
            current = self._current
        if current is None or (version is not None and version != current.version):
            request = "Latest" if version is None else "Specific"
            detail = self.name if version is None else f"{self.name}, {version}"
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: {request}({detail})")
        return current

    def status(self, version: int | None = None) -> list[tuple[int, str, str]]:
        """(version, state, error) for the served version and failed ones, as TF Serving's
        model status lists them; NOT_FOUND for a version it does not know."""
        with self._lock:
            current, failed = self._current, dict(self._failed)
        states = [(v, "END", message) for v, (message, _, _) in sorted(failed.items())
                  if current is None or v != current.version]
        if current is not None:
            states.append((current.version, "AVAILABLE", ""))
        states.sort(reverse=True)  # newest first
        if version is not None:
            states = [s for s in states if s[0] == version]
            if not states:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model {self.name}")
        if not states:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {self.name}")
        return states


class ModelRegistry:
    """All models of a ModelServerConfig, polled for new versions (and, with a config file,
    for changes to the config) by a background thread that logs errors and carries on."""

    def __init__(self, models: list[ServedModel], config_path: Path | None = None):
        self.models = {m.name: m for m in models}
        self.config_path = config_path
        self._config_text = config_path.read_text() if config_path else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config_file(cls, path: str | Path) -> ModelRegistry:
        """Reads a ModelServerConfig text file; relative base paths are relative to it."""
        path = Path(path)
        return cls(_read_config(path, _read_text(path)), path)

    def model(self, name: str) -> ServedModel:
        models = self.models
        if name not in models:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({name}); "
                               f"models served: {sorted(models)}")
        return models[name]

    def poll(self) -> None:
        """Looks for new versions of every model; one model's failure does not stop the
        others. After a version change, refreezes the heap (see `refreeze_heap`)."""
        changed = False
        for model in list(self.models.values()):
            try:
                changed |= model.poll()
            except Exception:  # say an unreadable base path: log it, try again next poll
                log.exception("%s: polling %s failed", model.name, model.base_path)
        if changed:
            refreeze_heap()

    def reload_config(self) -> bool:
        """Re-reads the config file if its text changed: new models are added (and loaded on
        the next poll), removed ones dropped, labels updated. A config that does not parse is
        logged and the previous one kept. Returns whether the models changed."""
        if self.config_path is None:
            return False
        text = _read_text(self.config_path)
        if text == self._config_text:
            return False
        self._config_text = text
        models = {}
        for new in _read_config(self.config_path, text):
            old = self.models.get(new.name)
            if old is not None and old.base_path == new.base_path:
                old.labels = new.labels
                new = old
            models[new.name] = new
        added, removed = sorted(set(models) - set(self.models)), sorted(
            set(self.models) - set(models))
        self.models = models  # one assignment: request threads see the old or the new dict
        log.info("reloaded %s: models %s (added %s, removed %s)", self.config_path,
                 sorted(models), added or "none", removed or "none")
        return True

    def start_polling(self, interval: float, config_interval: float = 0.0) -> None:
        """Polls every base path each `interval` seconds, as TF Serving's
        --file_system_poll_wait_seconds does, and the config file each `config_interval`
        seconds (0: never), as its --model_config_file_poll_wait_seconds does."""
        def loop():
            next_config = time.monotonic() + config_interval
            while not self._stop.wait(interval):
                try:
                    if config_interval > 0 and time.monotonic() >= next_config:
                        next_config = time.monotonic() + config_interval
                        self.reload_config()
                except Exception as error:  # keep the config being served
                    log.error("not reloading the model config: %s", error)
                try:
                    self.poll()
                except Exception:  # the poller must outlive any one bad poll
                    log.exception("version poll failed")

        self._thread = threading.Thread(target=loop, name="version-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"model config {path} does not exist: pass the models.config "
                                "that serving.export wrote") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the model config {path}: {error}") from error


def _read_config(path: Path, text: str) -> list[ServedModel]:
    """The models a ModelServerConfig text names, or ValueError saying what is wrong."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ValueError(f"{path} is not a ModelServerConfig text file: {error}") from error
    entries = config.model_config_list.config
    if not entries:
        raise ValueError(f"{path} configures no models (model_config_list is empty)")
    models = []
    for entry in entries:
        if not entry.name or not entry.base_path:
            raise ValueError(f"{path}: every model needs a name and a base_path")
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{path}: model {entry.name} has platform "
                             f"{entry.model_platform!r}; only 'tensorflow' is served")
        base = Path(entry.base_path)
        base = base if base.is_absolute() else path.parent / base
        models.append(ServedModel(entry.name, base, dict(entry.version_labels)))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a model name appears twice in {names}")
    return models


def signature_def_map(version: LoadedVersion):
    """The version's signatures as the SignatureDefMap TF Serving's metadata carries."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in version.signature_defs.items():
        signatures.signature_def[key].CopyFrom(signature)
    return signatures


def status_response(states: list[tuple[int, str, str]]):
    """`ServedModel.status` as TF Serving's GetModelStatusResponse proto."""
    from tensorflow_serving.apis import get_model_status_pb2

    response = get_model_status_pb2.GetModelStatusResponse()
    for version, state, error in states:
        entry = response.model_version_status.add(version=version)
        entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
        entry.status.SetInParent()  # TF Serving always reports it, {"error_code": "OK"} if fine
        if error:
            entry.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
            entry.status.error_message = error
    return response
