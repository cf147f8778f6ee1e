import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from serving.client import (
    GrpcClient,
    RestClient,
    ServingClientError,
    load_images,
    load_named_images,
    main,
)

pytest_plugins = ["tests.serving_fixtures"]  # exported, server, trainer
SHAPE = (12, 12, 1)


@pytest.fixture(scope="module")
def clients(server):
    grpc_client = GrpcClient(f"127.0.0.1:{server.grpc_port}")
    yield {"rest": RestClient(f"http://127.0.0.1:{server.rest_port}"), "grpc": grpc_client}
    grpc_client.close()


def images(n=3):
    return np.random.default_rng(1).uniform(size=(n, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_classify_equals_the_in_process_model(clients, trainer, transport):
    x = images()
    classes, probabilities = clients[transport].classify(x)
    expected = tf.nn.softmax(trainer.classifier(x, training=False)).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(classes, expected.argmax(-1))


def test_attack_is_the_same_over_rest_and_grpc_and_stays_in_the_ball(clients, trainer):
    x, labels = images(), [0, 1, 2]
    rest = clients["rest"].attack(x, labels, seeds=[4, 5, 6])
    grpc = clients["grpc"].attack(x, labels, seeds=[4, 5, 6])
    np.testing.assert_allclose(rest, grpc, atol=1e-6)
    assert np.abs(rest - x).max() <= trainer.config.epsilon + 1e-6
    assert not np.allclose(clients["rest"].attack(x, labels, seeds=[7, 8, 9]), rest)


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_metadata_and_errors_look_the_same_on_both_transports(clients, transport):
    client = clients[transport]
    assert client.input_shape("classifier") == SHAPE
    assert client.input_shape("generator") == SHAPE
    assert client.status("classifier")["model_version_status"][0]["state"] == "AVAILABLE"
    with pytest.raises(ServingClientError, match="Servable not found.*resnet"):
        client.classify(images(), model="resnet")
    with pytest.raises(ServingClientError, match=r"images must be in \[0, 1\]"):
        client.classify(images() * 2)


def test_rest_and_grpc_return_the_signatures_dtypes(clients):
    rest, grpc = (clients[t].predict("classifier", {"images": images()}) for t in ("rest", "grpc"))
    assert {k: v.dtype for k, v in rest.items()} == {k: v.dtype for k, v in grpc.items()} == {
        "probabilities": np.float32, "classes": np.int64}


def test_names_keep_the_file_of_each_image(tmp_path):
    np.save(tmp_path / "one.npy", images(1)[0])
    np.save(tmp_path / "two.npy", images(2))
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "a.png")
    paths = [tmp_path / "one.npy", tmp_path / "a.png", tmp_path / "two.npy"]
    loaded, names = load_named_images(paths, SHAPE)
    assert loaded.shape == (4, *SHAPE)
    assert names == [str(paths[0]), str(paths[1]), f"{paths[2]}[0]", f"{paths[2]}[1]"]


def test_load_images_reads_png_and_npy(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (12, 12), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", pixels)
    np.save(tmp_path / "c.npy", np.stack([pixels, pixels])[..., None].astype(np.float32) / 255)
    loaded = load_images([tmp_path / "a.png", tmp_path / "b.npy", tmp_path / "c.npy"], SHAPE)
    assert loaded.shape == (4, *SHAPE) and loaded.dtype == np.float32
    for image in loaded:
        np.testing.assert_allclose(image[..., 0], pixels / 255, atol=1e-6)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"big.png: images of shape \[28, 28, 1\].*\[12, 12, 1\]"):
        load_images([tmp_path / "big.png"], SHAPE)


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_command_line_classifies_and_attacks(server, trainer, tmp_path, capsys, transport):
    where = (["--rest", f"http://127.0.0.1:{server.rest_port}"] if transport == "rest"
             else ["--grpc", f"127.0.0.1:{server.grpc_port}"])
    x = images(2)
    np.save(tmp_path / "batch.npy", x)
    main([*where, "classify", str(tmp_path / "batch.npy")])
    expected = tf.nn.softmax(trainer.classifier(x, training=False)).numpy()
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{tmp_path / 'batch.npy'}[{i}]: class {p.argmax()} "
                     f"(probability {p.max():.3f})" for i, p in enumerate(expected)]

    main([*where, "attack", str(tmp_path / "batch.npy"), "--labels", "1", "--seed", "3",
          "--out", str(tmp_path / "adv")])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(" classified " in line for line in lines)
    adversarial = np.load(tmp_path / "adv" / "adversarial_images.npy")
    pngs = sorted((tmp_path / "adv").glob("*_adv.png"))
    assert len(pngs) == 2
    np.testing.assert_allclose(load_images(pngs, SHAPE), adversarial, atol=1 / 255)
    assert np.abs(adversarial - x).max() <= trainer.config.epsilon + 1e-6


def test_command_line_names_the_problem_and_exits_nonzero(server, tmp_path):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(SystemExit, match=r"\[28, 28, 1\]"):
        main(["--rest", f"http://127.0.0.1:{server.rest_port}", "classify",
              str(tmp_path / "big.png")])
    with pytest.raises(SystemExit, match="404.*Servable not found"):
        main(["--rest", f"http://127.0.0.1:{server.rest_port}", "classify", "--model", "resnet",
              str(tmp_path / "big.png")])
    np.save(tmp_path / "three.npy", images(3))
    with pytest.raises(SystemExit, match="one label, or one per image \\(3\\); got 2"):
        main(["--rest", f"http://127.0.0.1:{server.rest_port}", "attack",
              str(tmp_path / "three.npy"), "--labels", "1", "2", "--out", str(tmp_path / "adv")])
