import json
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from l2lda_tf.data import (
    load_dataset,
    load_tiny_imagenet,
    load_tiny_imagenet_folder,
    load_tiny_imagenet_tfds,
)
from training.fit import main

# wnids.txt order is not sorted in the real archive either: labels follow the file, not names
WNIDS = ("n09256479", "n01443537", "n04067472")
TRAIN_PER_CLASS = 3
VAL = ((0, "n04067472"), (1, "n09256479"), (2, "n01443537"), (3, "n09256479"))


def jpeg(label: int, number: int, size: int = 64, grey: bool = False) -> bytes:
    """A real JPEG whose red level encodes the class (survives compression) and whose noise
    makes every image distinct."""
    rng = np.random.default_rng(1000 * label + number)
    image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
    image[..., 0] += np.uint8(60 + 80 * label)
    if grey:
        image = image[..., :1]
    return tf.io.encode_jpeg(image, quality=95).numpy()


def write_tiny_imagenet(directory, size_of=lambda wnid, n: 64):
    """A miniature `tiny-imagenet-200/` in the official layout: wnids.txt, words.txt,
    train/<wnid>/{<wnid>_boxes.txt, images/*.JPEG}, val/{val_annotations.txt, images/},
    test/images/."""
    root = directory / "tiny-imagenet-200"
    (root / "test" / "images").mkdir(parents=True)
    (root / "test" / "images" / "test_0.JPEG").write_bytes(jpeg(0, 99))
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in WNIDS))
    (root / "words.txt").write_text("".join(f"{w}\tsomething\n" for w in WNIDS))
    for label, wnid in enumerate(WNIDS):
        images = root / "train" / wnid / "images"
        images.mkdir(parents=True)
        boxes = []
        for n in range(TRAIN_PER_CLASS):
            (images / f"{wnid}_{n}.JPEG").write_bytes(
                jpeg(label, n, size_of(wnid, n), grey=(label, n) == (1, 2)))
            boxes.append(f"{wnid}_{n}.JPEG\t0\t3\t60\t62\n")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for number, wnid in VAL:
        label = WNIDS.index(wnid)
        (root / "val" / "images" / f"val_{number}.JPEG").write_bytes(jpeg(label, 50 + number))
        lines.append(f"val_{number}.JPEG\t{wnid}\t0\t32\t44\t62\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    return root


def zip_tree(root, directory):
    """Zips the tree as the official archive does: members start with tiny-imagenet-200/."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.make_archive(str(directory / "tiny-imagenet-200"), "zip", root.parent, root.name)
    return directory / "tiny-imagenet-200.zip"


@pytest.fixture(autouse=True)
def miniature_shape(monkeypatch):
    """The miniature tree's shape stands in for the official archive's."""
    import l2lda_tf.data.tiny_imagenet as tiny

    monkeypatch.setattr(tiny, "EXPECTED", {"classes": len(WNIDS),
                                           "train_per_class": TRAIN_PER_CLASS,
                                           "validation": len(VAL)})


@pytest.fixture
def tree(tmp_path):
    return write_tiny_imagenet(tmp_path / "extracted")


def label_from_pixels(images):
    """The class each image was drawn for, from its mean red level."""
    return np.round((images[..., 0].mean(axis=(1, 2)) - 80) / 80).astype(int)


def test_folder_reader_labels_and_shapes(tree):
    data = load_tiny_imagenet_folder(tree)
    assert data.name == "tiny_imagenet" and data.num_classes == 3
    assert data.train_images.shape == (9, 64, 64, 3) and data.train_images.dtype == np.uint8
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # wnids.txt order
    assert data.eval_labels.tolist() == [2, 0, 1, 0]  # from val_annotations.txt
    grey = data.train_images[5]  # the greyscale JPEG, decoded to three equal channels
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    np.testing.assert_array_equal(label_from_pixels(data.train_images[[0, 3, 6]]), [0, 1, 2])
    np.testing.assert_array_equal(label_from_pixels(data.eval_images), data.eval_labels)
    expected = tf.io.decode_jpeg((tree / "val/images/val_2.JPEG").read_bytes(), channels=3)
    np.testing.assert_array_equal(data.eval_images[2], expected.numpy())


def test_data_dir_may_be_the_tree_or_its_parent(tree):
    for path in (tree, tree.parent):
        assert load_dataset("tiny_imagenet", path).eval_labels.tolist() == [2, 0, 1, 0]


def as_dict(images, labels):
    return {image.tobytes(): label for image, label in zip(images, labels)}


def test_tfds_builder_reads_the_zip_like_the_folder_reader(tree, tmp_path):
    archive = zip_tree(tree, tmp_path / "manual")
    data = load_tiny_imagenet_tfds(data_dir=tmp_path / "tfds", manual_dir=archive.parent)
    folder = load_tiny_imagenet_folder(tree)
    assert data.num_classes == 3 and data.image_shape == (64, 64, 3)
    # TFDS stores examples in hashed-key order: compare the (image → label) pairs
    assert as_dict(data.train_images, data.train_labels) == \
        as_dict(folder.train_images, folder.train_labels)
    assert as_dict(data.eval_images, data.eval_labels) == \
        as_dict(folder.eval_images, folder.eval_labels)
    builder = tfds.builder("tiny_imagenet", data_dir=tmp_path / "tfds")
    assert builder.info.features["label"].names == list(WNIDS)
    assert builder.info.splits["validation"].num_examples == 4
    archive.unlink()  # prepared once: later loads need no archive
    assert len(load_tiny_imagenet_tfds(data_dir=tmp_path / "tfds").train_labels) == 9


def test_data_dir_holding_the_zip_goes_through_tfds(tree, tmp_path, monkeypatch):
    import l2lda_tf.data.tiny_imagenet as tiny

    archive = zip_tree(tree, tmp_path / "download")
    prepared = []
    real = tiny.load_tiny_imagenet_tfds
    monkeypatch.setattr(tiny, "load_tiny_imagenet_tfds", lambda data_dir=None, manual_dir=None:
                        prepared.append(manual_dir) or real(tmp_path / "tfds", manual_dir))
    assert load_tiny_imagenet(archive.parent).num_classes == 3
    assert load_tiny_imagenet(archive).num_classes == 3
    assert prepared == [archive.parent, archive.parent]


def test_missing_archive_says_which_file_to_download_and_where(tmp_path):
    manual = tmp_path / "manual"
    with pytest.raises(FileNotFoundError, match=r"download http://cs231n.stanford.edu/"
                       r"tiny-imagenet-200.zip and put it, unextracted, at .*manual/"
                       r"tiny-imagenet-200.zip"):
        load_tiny_imagenet_tfds(data_dir=tmp_path / "tfds", manual_dir=manual)
    with pytest.raises(FileNotFoundError, match="at .*/tfds/downloads/manual/tiny-imagenet-200"):
        load_tiny_imagenet_tfds(data_dir=tmp_path / "tfds")  # TFDS's default manual directory
    # the builder itself, as `tfds.load("tiny_imagenet")` runs it, says the same
    builder = tfds.builder("tiny_imagenet", data_dir=tmp_path / "tfds")
    config = tfds.download.DownloadConfig(manual_dir=str(manual))
    with pytest.raises(FileNotFoundError, match="cs231n.stanford.edu/tiny-imagenet-200.zip"):
        builder.download_and_prepare(download_config=config)
    with pytest.raises(FileNotFoundError, match="holds neither tiny-imagenet-200/ nor "
                       "tiny-imagenet-200.zip: download http://cs231n"):
        load_tiny_imagenet(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tiny_imagenet(tmp_path / "nowhere")


def test_corrupt_zip(tree, tmp_path):
    archive = zip_tree(tree, tmp_path / "manual")
    archive.write_bytes(archive.read_bytes()[:1000])  # an interrupted download
    with pytest.raises(ValueError, match="tiny-imagenet-200.zip is not a valid zip archive"):
        load_tiny_imagenet_tfds(data_dir=tmp_path / "tfds", manual_dir=archive.parent)


def test_corrupt_jpeg(tree, tmp_path):
    (tree / "train" / WNIDS[2] / "images" / f"{WNIDS[2]}_1.JPEG").write_bytes(b"\xff\xd8 junk")
    with pytest.raises(ValueError, match=f"1 files are not readable JPEGs.*{WNIDS[2]}_1.JPEG"):
        load_tiny_imagenet_folder(tree)
    archive = zip_tree(tree, tmp_path / "manual")
    with pytest.raises(ValueError, match=f"{WNIDS[2]}_1.JPEG is not a readable JPEG"):
        load_tiny_imagenet_tfds(data_dir=tmp_path / "tfds", manual_dir=archive.parent)


def test_wrong_image_size(tmp_path):
    tree = write_tiny_imagenet(tmp_path / "x", lambda wnid, n: 56 if n == 1 else 64)
    with pytest.raises(ValueError, match=r"3 images are not 64×64 as Tiny ImageNet's are, e.g. "
                       rf".*{WNIDS[0]}_1.JPEG is 56×56"):
        load_tiny_imagenet_folder(tree)
    archive = zip_tree(tree, tmp_path / "manual")
    with pytest.raises(ValueError, match=f"{WNIDS[0]}_1.JPEG is 56×56; Tiny ImageNet images "
                       "are 64×64"):
        load_tiny_imagenet_tfds(data_dir=tmp_path / "tfds", manual_dir=archive.parent)


def test_missing_class_folder(tree, tmp_path):
    shutil.rmtree(tree / "train" / WNIDS[1])
    with pytest.raises(FileNotFoundError, match=f"class folder train/{WNIDS[1]}/images/ of "
                       f"{WNIDS[1]} \\(listed in wnids.txt\\) is missing"):
        load_tiny_imagenet_folder(tree)
    archive = zip_tree(tree, tmp_path / "manual")
    with pytest.raises(FileNotFoundError, match=f"class folder train/{WNIDS[1]}/images/"):
        load_tiny_imagenet_tfds(data_dir=tmp_path / "tfds", manual_dir=archive.parent)


def test_bad_annotations(tree):
    (tree / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn00000000\t0\t1\t2\t3\n")
    with pytest.raises(ValueError, match="val_annotations.txt line 1 .* with a wnid from "
                       "wnids.txt"):
        load_tiny_imagenet_folder(tree)
    (tree / "val" / "val_annotations.txt").unlink()
    with pytest.raises(FileNotFoundError, match="lacks tiny-imagenet-200/val/val_annotations"):
        load_tiny_imagenet_folder(tree)


def test_an_archive_of_another_shape_is_refused(tree, tmp_path, monkeypatch):
    import l2lda_tf.data.tiny_imagenet as tiny

    monkeypatch.setattr(tiny, "EXPECTED", {"classes": 200, "train_per_class": 500,
                                           "validation": 10_000})
    archive = zip_tree(tree, tmp_path / "manual")
    message = (r"is not the official Tiny ImageNet \(3 classes, 3 classes without 500 training "
               r"images \(e.g. n09256479: 3\), 4 annotated validation images; it has 200 "
               r"classes of 500 training images and 10,000 validation images\)")
    with pytest.raises(ValueError, match=message):
        load_tiny_imagenet_tfds(data_dir=tmp_path / "tfds", manual_dir=archive.parent)
    assert not (tmp_path / "tfds" / "tiny_imagenet").exists() or \
        not tfds.builder("tiny_imagenet", data_dir=tmp_path / "tfds").is_prepared()
    with pytest.raises(ValueError, match=message):
        load_tiny_imagenet_folder(tree)


def test_the_cache_is_tied_to_the_archive_it_was_prepared_from(tree, tmp_path):
    archive = zip_tree(tree, tmp_path / "a")
    first = load_tiny_imagenet_tfds(data_dir=tmp_path / "tfds", manual_dir=archive.parent)
    # the same archive again loads the cache
    again = load_tiny_imagenet_tfds(data_dir=tmp_path / "tfds", manual_dir=archive.parent)
    assert as_dict(again.train_images, again.train_labels) == \
        as_dict(first.train_images, first.train_labels)
    # another archive of the same shape is refused, not silently replaced by the cache
    (tree / "val" / "images" / "val_0.JPEG").write_bytes(jpeg(2, 77))
    other = zip_tree(tree, tmp_path / "b")
    with pytest.raises(ValueError, match=r"the tiny_imagenet cache in .*tfds/tiny_imagenet/1.0.0 "
                       r"was prepared from another archive than .*b/tiny-imagenet-200.zip; "
                       r"delete"):
        load_tiny_imagenet_tfds(data_dir=tmp_path / "tfds", manual_dir=other.parent)


def test_a_missing_or_file_data_dir_says_what_belongs_there(tmp_path):
    wanted = ("it should hold tiny-imagenet-200.zip (download http://cs231n.stanford.edu/"
              "tiny-imagenet-200.zip) or the extracted tiny-imagenet-200/ folder")
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist; " + re.escape(wanted)):
        load_tiny_imagenet(tmp_path / "nowhere")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"afile is a file; " + re.escape(wanted)):
        load_tiny_imagenet(tmp_path / "afile")


@pytest.mark.slow
def test_fit_cli_on_the_miniature_tree(tree, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--dataset", "tiny_imagenet", "--data-dir", str(tree), "--defense", "plain",
                 "--epochs", "1", "--batch-size", "3", "--eval-pgd-steps", "1",
                 "--verbose", "0", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run == {"num_classes": 3, "image_shape": [64, 64, 3], "steps_per_epoch": 3}
    assert json.loads((out / "config.json").read_text())["classifier"] == "resnet18"
    assert (out / "export" / "classifier" / "1" / "saved_model.pb").exists()
    assert "pgd1_acc=" in capsys.readouterr().out
