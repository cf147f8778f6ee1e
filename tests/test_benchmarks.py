import json

import pytest


def test_attack_benchmark_times_both_implementations_of_both_attacks(tmp_path, capsys):
    pytest.importorskip("cleverhans", reason="cleverhans is a dev dependency: pip install .[dev]")
    from benchmarks.attacks import main

    path = tmp_path / "attacks.json"
    main(["--dataset", "mnist", "--batch-size", "4", "--repeats", "1", "--steps", "2",
          "--json", str(path)])

    records = json.loads(path.read_text())
    assert {(r["attack"], r["implementation"]) for r in records} == {
        (attack, name) for attack in ("pgd", "fgsm") for name in ("ours", "cleverhans")}
    for record in records:
        assert record["images_per_s"] > 0
        assert record["in_ball"] and record["in_range"]
    assert "| ours / CleverHans |" in capsys.readouterr().out


def test_authors_recipe_crops_are_windows_of_the_padded_image():
    """torchvision's RandomCrop(28, 4): each batch image is a 28×28 window of its 4-pixel zero
    padding (NCHW), every epoch a new permutation of all images."""
    import numpy as np

    from benchmarks.authors_recipe import crop_batches

    rng = np.random.default_rng(0)
    images = rng.random((6, 28, 28, 1), dtype=np.float32) + 1  # no zeros inside an image
    labels = np.arange(6)
    batches = crop_batches(images, labels, 3, np.random.default_rng(1))
    epoch = [next(batches) for _ in range(2)]
    assert sorted(np.concatenate([y for _, y in epoch])) == list(range(6))
    padded = np.pad(images[..., 0], ((0, 0), (4, 4), (4, 4)))
    for x, y in epoch:
        assert x.shape == (3, 1, 28, 28)
        for crop, label in zip(x[:, 0], y):
            assert any(np.array_equal(crop, padded[label, a:a + 28, b:b + 28])
                       for a in range(9) for b in range(9))
    shifts = {int((x[:, 0] == 0).sum()) for x, _ in epoch}
    assert shifts != {0}  # some crops do shift, bringing in the zero padding
