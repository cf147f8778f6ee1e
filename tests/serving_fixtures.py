"""Fixtures shared by the serving tests: one export of the tiny L2L-DA run (conftest's
`tiny_l2lda_run`), one server over it and the run's trainer, each made once per session.
Test modules import the fixtures they use by name."""

import pytest

from l2lda_tf.experiment import load_run
from serving.export import export_run
from serving.server import ModelServer

SHAPE = (12, 12, 1)
MAX_REQUEST_BYTES = 200_000


@pytest.fixture(scope="session")
def exported(tiny_l2lda_run, tmp_path_factory):
    """A model base path with classifier/1, generator/1 and models.config. Read-only: tests
    that add versions copy it."""
    base = tmp_path_factory.mktemp("served")
    export_run(tiny_l2lda_run, base)
    return base


@pytest.fixture(scope="session")
def server(exported):
    with ModelServer(exported / "models.config", rest_port=0, grpc_port=0, poll_seconds=0.2,
                     max_request_bytes=MAX_REQUEST_BYTES) as server:
        yield server


@pytest.fixture(scope="session")
def trainer(tiny_l2lda_run):
    return load_run(tiny_l2lda_run)
