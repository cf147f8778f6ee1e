"""Hot reload that never dies: odd folders, versions copied in pieces, models added to the
config while serving, and errors inside the poller. Each test serves a copy of the shared
export and polls every 0.1 s; every wait is bounded."""

import shutil
import time

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.registry import MAX_LOAD_ATTEMPTS, ServedModel
from serving.server import ModelServer

pytest_plugins = ["tests.serving_fixtures"]  # exported


@pytest.fixture
def base(exported, tmp_path):
    """A copy of the shared export whose config names only the classifier, at paths in the
    copy."""
    base = tmp_path / "models"
    shutil.copytree(exported, base)
    write_config(base, ["classifier"])
    return base


def write_config(base, names):
    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        config.model_config_list.config.add(name=name, base_path=str(base / name),
                                            model_platform="tensorflow")
    (base / "models.config").write_text(text_format.MessageToString(config))


def serve(base, **options):
    return ModelServer(base / "models.config", rest_port=0, grpc_port=0, poll_seconds=0.1,
                       **options)


def states(server, name="classifier"):
    try:
        return [(v, state) for v, state, _ in server.registry.model(name).status()]
    except Exception as error:  # noqa: BLE001 - the test reads NOT_FOUND as "none"
        return repr(error)


def wait_for(condition, what, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(0.05)


def test_odd_folders_do_not_stop_new_versions(base):
    for odd in ("²", "abc", "٣", ".3.staging"):
        (base / "classifier" / odd).mkdir()
    with serve(base) as server:  # the old server failed here with a traceback
        assert states(server) == [(1, "AVAILABLE")]
        shutil.copytree(base / "classifier" / "1", base / "classifier" / ".tmp")
        (base / "classifier" / ".tmp").rename(base / "classifier" / "2")
        wait_for(lambda: states(server) == [(2, "AVAILABLE")], "loading version 2")
        assert server.registry._thread.is_alive()


def test_a_version_copied_in_pieces_is_served_once_complete(base):
    """saved_model.pb first, variables/ later (a plain `cp -r` or rsync): the early loads fail
    until the old server gave up for good; now a change to the folder earns a new try."""
    with serve(base) as server:
        source, target = base / "classifier" / "1", base / "classifier" / "2"
        target.mkdir()
        shutil.copy(source / "saved_model.pb", target / "saved_model.pb")
        wait_for(lambda: states(server) == [(2, "END"), (1, "AVAILABLE")], "failing version 2")
        time.sleep(MAX_LOAD_ATTEMPTS * 0.1 + 0.5)  # every attempt used up
        assert states(server) == [(2, "END"), (1, "AVAILABLE")]
        for item in source.iterdir():
            if item.name != "saved_model.pb":
                (shutil.copytree if item.is_dir() else shutil.copy)(item, target / item.name)
        wait_for(lambda: states(server) == [(2, "AVAILABLE")], "loading the completed copy")


def test_models_added_to_the_config_are_served_without_restart(base):
    with serve(base, config_poll_seconds=0.1) as server:
        assert "not found" in states(server, "generator")
        write_config(base, ["classifier", "generator"])
        wait_for(lambda: states(server, "generator") == [(1, "AVAILABLE")], "serving generator")
        (base / "models.config").write_text("model_config_list { config { name: ")  # broken
        time.sleep(0.5)
        assert states(server, "generator") == [(1, "AVAILABLE")]  # the last good config stays
        write_config(base, ["generator"])
        wait_for(lambda: "not found" in states(server, "classifier"), "dropping classifier")
        assert states(server, "generator") == [(1, "AVAILABLE")]


def test_an_exception_in_a_poll_does_not_end_the_poller(base, monkeypatch):
    polls = []
    real_poll = ServedModel.poll

    def flaky_poll(self):
        polls.append(self.name)
        if len(polls) <= 3:
            raise RuntimeError("disk on fire")
        return real_poll(self)

    with serve(base) as server:
        monkeypatch.setattr(ServedModel, "poll", flaky_poll)
        shutil.copytree(base / "classifier" / "1", base / "classifier" / ".tmp")
        (base / "classifier" / ".tmp").rename(base / "classifier" / "2")
        wait_for(lambda: states(server) == [(2, "AVAILABLE")], "loading version 2 after errors")
    assert len(polls) > 3
