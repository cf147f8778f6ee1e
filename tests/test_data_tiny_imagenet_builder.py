"""TFDS's own checks of the `tiny_imagenet` builder (registration, preparation, reading back,
splits disjoint) on a two-class dummy tree in tests/data/tiny_imagenet."""

from pathlib import Path
from unittest import mock

import tensorflow_datasets as tfds

import l2lda_tf.data.tiny_imagenet as tiny

DUMMY = Path(__file__).resolve().parent / "data" / "tiny_imagenet"


class TinyImagenetBuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = tiny.TinyImagenet
    EXAMPLE_DIR = str(DUMMY)  # also the manual directory: it holds tiny-imagenet-200/
    SPLITS = {"train": 4, "validation": 2}

    def setUp(self):
        super().setUp()
        shape = mock.patch.object(tiny, "EXPECTED", {"classes": 2, "train_per_class": 2,
                                                     "validation": 2})
        shape.start()
        self.addCleanup(shape.stop)

    def test_labels_follow_wnids_and_the_source_is_recorded(self):
        builder = self.builder
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=str(DUMMY)))
        assert builder.info.features["label"].names == ["n01443537", "n09256479"]
        assert builder.info.metadata["source"] == tiny._Folder(
            DUMMY / "tiny-imagenet-200").fingerprint()
        validation = builder.as_dataset(split="validation")
        labels = {ex["file_name"].decode(): int(ex["label"]) for ex in
                  tfds.as_numpy(validation)}
        # val_annotations.txt: val_0 is n09256479 (label 1), val_1 is n01443537 (label 0)
        assert labels == {"val/images/val_0.JPEG": 1, "val/images/val_1.JPEG": 0}
