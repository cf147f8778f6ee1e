import keras
import numpy as np
import pytest
import tensorflow as tf

from l2lda_tf.data import Augmentation, augment, augmentation_for, training_batches
from l2lda_tf.data.pipeline import PAD, rotation_transforms


def crops_of(image: np.ndarray) -> dict[bytes, tuple[int, int, bool]]:
    """Every 4-pixel-padded crop of `image`, flipped or not, keyed by its bytes."""
    height, width = image.shape[:2]
    padded = np.pad(image, [(PAD, PAD), (PAD, PAD), (0, 0)])
    out = {}
    for top in range(2 * PAD + 1):
        for left in range(2 * PAD + 1):
            crop = padded[top:top + height, left:left + width]
            out.setdefault(crop.tobytes(), (top, left, False))
            out.setdefault(crop[:, ::-1].tobytes(), (top, left, True))
    return out


@pytest.fixture
def noise_images():
    rng = np.random.default_rng(0)
    return rng.integers(1, 256, (48, 10, 10, 3), dtype=np.uint8), rng.integers(0, 5, 48)


def test_augment_is_a_padded_crop_and_maybe_a_flip(noise_images):
    images, _ = noise_images
    out = augment(tf.constant(images), tf.constant([3, 4], tf.int64)).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    choices = [crops_of(image).get(result.tobytes()) for image, result in zip(images, out)]
    assert None not in choices
    assert {flip for _, _, flip in choices} == {False, True}
    assert len({(top, left) for top, left, _ in choices}) > 10  # offsets vary per example
    again = augment(tf.constant(images), tf.constant([3, 4], tf.int64)).numpy()
    np.testing.assert_array_equal(out, again)  # stateless: the key decides everything
    other = augment(tf.constant(images), tf.constant([3, 5], tf.int64)).numpy()
    assert not np.array_equal(out, other)


CROP_FLIP = Augmentation(crop=True, flip=True)


def collect(images, labels, first, last, augmented):
    batches = training_batches(images, labels, 8, 5, first, last,
                               augmentation=CROP_FLIP if augmented else None)
    return [(x.numpy(), y.numpy()) for x, y in batches]


def test_augmented_batches_are_deterministic_and_resumable(noise_images):
    images, labels = noise_images
    full = collect(images, labels, 0, 3, augmented=True)
    resumed = collect(images, labels, 1, 3, augmented=True)
    assert len(full) == 18 and len(resumed) == 12
    for (xa, ya), (xb, yb) in zip(full[6:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert full[0][0].dtype == np.float32 and 0 <= full[0][0].min() <= full[0][0].max() <= 1


def test_augmentation_keeps_order_labels_and_content(noise_images):
    images, labels = noise_images
    plain = collect(images, labels, 0, 2, augmented=False)
    augmented = collect(images, labels, 0, 2, augmented=True)
    changed = 0
    for (x, y), (xa, ya) in zip(plain, augmented):
        np.testing.assert_array_equal(y, ya)  # the same shuffle
        originals = np.round(x * 255).astype(np.uint8)
        results = np.round(xa * 255).astype(np.uint8)
        for original, result in zip(originals, results):
            assert result.tobytes() in crops_of(original)
            changed += not np.array_equal(original, result)
    assert changed > 80  # of 96: only the centred unflipped crop (1 in 162) is unchanged
    # the same image is augmented differently in another epoch
    assert not np.array_equal(augmented[0][0], augmented[6][0])


def test_unaugmented_batches_are_exact_pixels(noise_images):
    images, labels = noise_images
    for x, y in collect(images, labels, 0, 1, augmented=False):
        rows = [np.flatnonzero((images == np.round(xi * 255)).all(axis=(1, 2, 3)))[0]
                for xi in x]
        np.testing.assert_array_equal(labels[rows], y)


def test_digits_are_cropped_but_never_flipped(noise_images):
    images, _ = noise_images
    out = augment(tf.constant(images), tf.constant([3, 4], tf.int64),
                  augmentation_for("mnist")).numpy()
    choices = [crops_of(image).get(result.tobytes()) for image, result in zip(images, out)]
    assert None not in choices and not any(flip for _, _, flip in choices)
    assert len({(top, left) for top, left, _ in choices}) > 10
    assert augmentation_for("digits") == augmentation_for("mnist")


def test_rotation_transform_turns_the_image_about_its_centre():
    image = np.zeros((1, 9, 9, 1), np.float32)
    image[0, 1, 4, 0] = 1.0  # a pixel straight above the centre (4, 4)
    quarter = keras.ops.image.affine_transform(
        tf.constant(image), rotation_transforms(tf.constant([np.pi / 2]), 9, 9),
        interpolation="bilinear", fill_mode="constant")
    np.testing.assert_allclose(quarter.numpy()[0, :, :, 0], np.rot90(image[0, :, :, 0], 1),
                               atol=1e-5)
    same = keras.ops.image.affine_transform(
        tf.constant(image), rotation_transforms(tf.constant([0.0]), 9, 9))
    np.testing.assert_allclose(same.numpy(), image, atol=1e-6)


def test_tiny_imagenet_rotates_by_at_most_20_degrees_and_flips(noise_images):
    tiny = augmentation_for("tiny_imagenet")
    assert (tiny.crop, tiny.flip, tiny.rotation) == (False, True, 20.0)
    disk = np.zeros((64, 33, 33, 1), np.uint8)
    yy, xx = np.mgrid[:33, :33]
    disk[:, (yy - 16) ** 2 + (xx - 16) ** 2 <= 100] = 255  # rotation-invariant content
    bar = np.zeros_like(disk)
    bar[:, 15:18, 4:29] = 255  # a horizontal bar: rotation tilts it
    key = tf.constant([1, 2], tf.int64)
    # no crop: a shift would move the disk's edge (~25% of the pixels differ), a rotation only
    # resamples it
    moved = np.abs(augment(tf.constant(disk), key, tiny).numpy().astype(float) - disk) > 128
    assert moved.mean() < 0.03
    out = augment(tf.constant(bar), key, tiny).numpy()
    ends = out[:, 8:25, 6] > 64  # column near the bar's left end: where the bar now is
    rows = np.array([np.flatnonzero(e).mean() + 8 if e.any() else 16 for e in ends])
    tilt = np.degrees(np.arctan2(np.abs(rows - 16), 10))
    assert tilt.max() <= 21 and tilt.max() > 8  # up to ±20° and really rotated
