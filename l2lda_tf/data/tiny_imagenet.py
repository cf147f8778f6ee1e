"""Tiny ImageNet (200 classes, 64×64×3): a TFDS builder over the official zip, and a reader
for the extracted `tiny-imagenet-200/` folder.

Layout of the official archive (http://cs231n.stanford.edu/tiny-imagenet-200.zip):
    tiny-imagenet-200/wnids.txt                        the 200 WordNet ids; label = line number
    tiny-imagenet-200/train/<wnid>/images/*.JPEG       500 training images per class
    tiny-imagenet-200/val/images/*.JPEG                10,000 validation images
    tiny-imagenet-200/val/val_annotations.txt          file <TAB> wnid <TAB> x0 y0 x1 y1 (box)
    tiny-imagenet-200/test/images/*.JPEG               unlabelled, unused
The validation split is the evaluation split, as in the paper.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from l2lda_tf.data.dataset import ImageDataset
from l2lda_tf.data.tfds_arrays import load_tfds_arrays

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE = "tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"
SHAPE = (64, 64, 3)
DECODE_BATCH = 1000
# The official archive's shape: anything else (a partial or home-made tree) is refused
EXPECTED = {"classes": 200, "train_per_class": 500, "validation": 10_000}


class _Folder:
    """The `tiny-imagenet-200/` tree on disk; paths relative to it, '/'-separated."""

    def __init__(self, root: Path):
        self.root, self.where = root, str(root)

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def read_bytes(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def files(self, rel_dir: str) -> list[str]:
        return sorted(p.name for p in (self.root / rel_dir).iterdir() if p.is_file())

    def fingerprint(self) -> str:
        """Identifies the tree's content cheaply: every file's path and size."""
        digest = hashlib.sha256()
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            digest.update(f"{path.relative_to(self.root).as_posix()}\0{path.stat().st_size}\n"
                          .encode())
        return "folder:" + digest.hexdigest()


class _Zip:
    """The `tiny-imagenet-200/` tree inside the official zip, indexed once by member name."""

    def __init__(self, path: Path):
        self.where = str(path)
        try:
            self.zip = zipfile.ZipFile(path)
            names = self.zip.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise ValueError(f"{path} is not a valid zip archive (corrupt or partly downloaded: "
                             f"{err}); download {URL} again") from err
        self.prefix = f"{FOLDER}/"
        self.names = {n[len(self.prefix):] for n in names
                      if n.startswith(self.prefix) and not n.endswith("/")}
        self.children: dict[str, list[str]] = {}
        for name in sorted(self.names):
            parent, _, base = name.rpartition("/")
            self.children.setdefault(parent, []).append(base)

    def exists(self, rel: str) -> bool:
        return rel in self.names or rel.rstrip("/") in self.children

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.zip.read(self.prefix + rel)
        except (zipfile.BadZipFile, OSError, EOFError) as err:  # includes CRC mismatches
            raise ValueError(f"{self.where}: {rel} is corrupt ({err}); download {URL} again") \
                from err

    def files(self, rel_dir: str) -> list[str]:
        return self.children.get(rel_dir.rstrip("/"), [])

    def fingerprint(self) -> str:
        """Identifies the archive's content from its directory: member names, sizes, CRCs."""
        digest = hashlib.sha256()
        for info in sorted(self.zip.infolist(), key=lambda i: i.filename):
            digest.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
        return "zip:" + digest.hexdigest()


def _read_text(tree, rel: str) -> str:
    if not tree.exists(rel):
        raise FileNotFoundError(f"{tree.where} lacks {FOLDER}/{rel}: not a complete Tiny "
                                f"ImageNet tree; download {URL} again")
    return tree.read_bytes(rel).decode("utf-8")


def index(tree) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """The class ids (wnids.txt order) and, per split, (image path, label) pairs."""
    wnids = [w.strip() for w in _read_text(tree, "wnids.txt").splitlines() if w.strip()]
    if len(set(wnids)) != len(wnids) or not wnids:
        raise ValueError(f"{tree.where}: wnids.txt must list distinct class ids, one a line")
    labels = {wnid: i for i, wnid in enumerate(wnids)}
    train = []
    for wnid, label in labels.items():
        folder = f"train/{wnid}/images"
        if not tree.exists(folder):
            raise FileNotFoundError(f"{tree.where}: class folder {folder}/ of {wnid} (listed in "
                                    "wnids.txt) is missing; extract the whole archive again")
        images = [f for f in tree.files(folder) if f.lower().endswith((".jpeg", ".jpg"))]
        if not images:
            raise FileNotFoundError(f"{tree.where}: class folder {folder}/ holds no JPEG images")
        train += [(f"{folder}/{name}", label) for name in images]
    validation = []
    for number, line in enumerate(_read_text(tree, "val/val_annotations.txt").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in labels:
            raise ValueError(f"{tree.where}: val/val_annotations.txt line {number} ({line!r}) "
                             "must be 'file<TAB>wnid<TAB>box' with a wnid from wnids.txt")
        validation.append((f"val/images/{fields[0]}", labels[fields[1]]))
    if not validation:
        raise ValueError(f"{tree.where}: val/val_annotations.txt lists no images")
    missing = [path for path, _ in validation if not tree.exists(path)]
    if missing:
        raise FileNotFoundError(f"{tree.where}: {len(missing)} validation images are missing, "
                                f"e.g. {missing[0]}")
    check_shape(tree.where, wnids, train, validation)
    return wnids, {"train": train, "validation": validation}


def check_shape(where: str, wnids: list[str], train: list, validation: list) -> None:
    """Raises unless the tree has the official archive's shape (`EXPECTED`): 200 classes of
    500 training images each, and 10,000 annotated validation images."""
    per_class = {wnid: 0 for wnid in wnids}
    for path, _ in train:
        per_class[path.split("/")[1]] += 1
    wrong = {w: n for w, n in per_class.items() if n != EXPECTED["train_per_class"]}
    problems = []
    if len(wnids) != EXPECTED["classes"]:
        problems.append(f"{len(wnids)} classes")
    if wrong:
        wnid, count = next(iter(wrong.items()))
        problems.append(f"{len(wrong)} classes without {EXPECTED['train_per_class']} "
                        f"training images (e.g. {wnid}: {count})")
    if len(validation) != EXPECTED["validation"]:
        problems.append(f"{len(validation)} annotated validation images")
    if problems:
        raise ValueError(f"{where} is not the official Tiny ImageNet ({', '.join(problems)}; "
                         f"it has {EXPECTED['classes']} classes of "
                         f"{EXPECTED['train_per_class']} training images and "
                         f"{EXPECTED['validation']:,} validation images): download {URL} again")


def check_jpeg(data: bytes, where: str) -> None:
    """Raises ValueError unless `data` is a JPEG of Tiny ImageNet's 64×64 (reads the header)."""
    try:
        height, width = tf.io.extract_jpeg_shape(data).numpy()[:2]
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(f"{where} is not a readable JPEG (corrupt file?)") from err
    if (height, width) != SHAPE[:2]:
        raise ValueError(f"{where} is {height}×{width}; Tiny ImageNet images are 64×64")


def _open_manual(manual_dir: Path):
    """The tree in a TFDS manual directory: the official zip, or the extracted folder."""
    if (manual_dir / ARCHIVE).exists():
        return _Zip(manual_dir / ARCHIVE)
    if (manual_dir / FOLDER / "wnids.txt").exists():
        return _Folder(manual_dir / FOLDER)
    raise FileNotFoundError(missing_archive_message(manual_dir))


def missing_archive_message(manual_dir: Path) -> str:
    """What to download and where to put it, for a manual directory without the archive."""
    return (f"Tiny ImageNet needs the official archive: download {URL} and put it, unextracted, "
            f"at {manual_dir / ARCHIVE} (or load it from the extracted {FOLDER}/ folder)")


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
    """Tiny ImageNet 200: 100,000 train and 10,000 labelled validation images, 64×64×3."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Train and validation splits of tiny-imagenet-200.zip."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download {URL} and put it, unextracted, in the manual directory "
        f"(`<data_dir>/downloads/manual/{ARCHIVE}` by default).")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=SHAPE, encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(),  # names = wnids.txt, set when prepared
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            # "source": the fingerprint of the archive it was prepared from
            metadata=tfds.core.MetadataDict(),
            homepage="https://cs231n.stanford.edu/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        try:
            manual_dir = Path(dl_manager.manual_dir)
        except AssertionError as err:  # the manual directory is missing or empty
            raise FileNotFoundError(f"Tiny ImageNet needs the official archive: download {URL} "
                                    f"and put it, unextracted, in the manual directory "
                                    f"({str(err).splitlines()[0]})") from err
        tree = _open_manual(manual_dir)
        wnids, splits = index(tree)
        self.info.features["label"].names = wnids
        self.info.metadata["source"] = tree.fingerprint()
        return {split: self._generate_examples(tree, items) for split, items in splits.items()}

    def _generate_examples(self, tree, items):
        for path, label in items:
            data = tree.read_bytes(path)
            check_jpeg(data, f"{tree.where}: {path}")
            yield path, {"image": data, "label": label, "file_name": path}


def load_tiny_imagenet_tfds(data_dir: str | Path | None = None,
                            manual_dir: str | Path | None = None) -> ImageDataset:
    """Tiny ImageNet through the `tiny_imagenet` TFDS builder; the first call prepares it
    (from `manual_dir`, by default `<data_dir>/downloads/manual`) into TFRecords."""
    builder = tfds.builder("tiny_imagenet", data_dir=data_dir)
    manual = Path(manual_dir) if manual_dir else Path(builder.data_dir_root) / "downloads/manual"
    if not builder.is_prepared():
        _open_manual(manual)  # fails early, naming the file to download
    elif manual_dir:
        check_source(builder, _open_manual(manual))
    return load_tfds_arrays("tiny_imagenet", "tiny_imagenet", ("train", "validation"),
                            data_dir=data_dir,
                            download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))


def check_source(builder, tree) -> None:
    """Refuses a TFDS cache prepared from another archive than `tree`: TFDS would load the
    cache and silently ignore the archive given."""
    prepared_from = builder.info.metadata.get("source") if builder.info.metadata else None
    if prepared_from != tree.fingerprint():
        raise ValueError(f"the tiny_imagenet cache in {builder.data_dir} was prepared from "
                         f"{'another archive' if prepared_from else 'an unrecorded archive'} "
                         f"than {tree.where}; delete {builder.data_dir} to prepare it from this "
                         "one, or use another TFDS data directory")


def load_tiny_imagenet_folder(folder: str | Path) -> ImageDataset:
    """Tiny ImageNet from the extracted `tiny-imagenet-200/` folder, decoded in parallel."""
    tree = _Folder(Path(folder))
    wnids, splits = index(tree)
    arrays = [decode_jpegs(tree.root, splits[s]) for s in ("train", "validation")]
    return ImageDataset("tiny_imagenet", *arrays[0], *arrays[1], num_classes=len(wnids))


def decode_jpegs(root: Path, items: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Reads and decodes the (path under `root`, label) `items` with a parallel tf.data map
    into uint8 [N, 64, 64, 3] images and int64 labels; names any unreadable or mis-sized file."""
    paths = [str(root / path) for path, _ in items]

    def decode(i, path):
        data = tf.io.read_file(path)
        size = tf.io.extract_jpeg_shape(data)[:2]
        right = tf.reduce_all(size == SHAPE[:2])
        image = tf.cond(right, lambda: tf.io.decode_jpeg(data, channels=3),
                        lambda: tf.zeros(SHAPE, tf.uint8))
        return i, tf.ensure_shape(image, SHAPE), size

    decoded = (tf.data.Dataset.from_tensor_slices(paths).enumerate()
               .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
               .ignore_errors()  # unreadable files drop out; their indices name them below
               .batch(DECODE_BATCH).prefetch(tf.data.AUTOTUNE))
    chunks = list(decoded.as_numpy_iterator())
    indices = np.concatenate([i for i, _, _ in chunks]) if chunks else np.zeros(0, np.int64)
    if len(indices) < len(paths):
        bad = sorted(set(range(len(paths))) - set(indices.tolist()))
        raise ValueError(f"{len(bad)} files are not readable JPEGs (corrupt?), "
                         f"e.g. {paths[bad[0]]}")
    sizes = np.concatenate([size for _, _, size in chunks])
    wrong = np.flatnonzero(np.any(sizes != SHAPE[:2], axis=1))
    if len(wrong):
        height, width = sizes[wrong[0]]
        raise ValueError(f"{len(wrong)} images are not 64×64 as Tiny ImageNet's are, e.g. "
                         f"{paths[wrong[0]]} is {height}×{width}")
    labels = np.array([label for _, label in items], np.int64)
    return np.concatenate([images for _, images, _ in chunks]), labels[indices]


def load_tiny_imagenet(data_dir: str | Path | None = None) -> ImageDataset:
    """Tiny ImageNet from `data_dir` (the extracted folder, a directory holding it, or one
    holding the official zip, prepared through TFDS), or from the TFDS manual directory."""
    if data_dir is None:
        return load_tiny_imagenet_tfds()
    data_dir = Path(data_dir)
    if data_dir.is_file() and data_dir.name == ARCHIVE:
        return load_tiny_imagenet_tfds(manual_dir=data_dir.parent)
    wanted = (f"it should hold {ARCHIVE} (download {URL}) or the extracted {FOLDER}/ folder, "
              f"or be that folder")
    if data_dir.is_file():
        raise FileNotFoundError(f"Tiny ImageNet data directory {data_dir} is a file; {wanted}")
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Tiny ImageNet data directory {data_dir} does not exist; "
                                f"{wanted}")
    if (data_dir / "wnids.txt").exists():
        return load_tiny_imagenet_folder(data_dir)
    if (data_dir / FOLDER / "wnids.txt").exists():
        return load_tiny_imagenet_folder(data_dir / FOLDER)
    if (data_dir / ARCHIVE).exists():
        return load_tiny_imagenet_tfds(manual_dir=data_dir)
    raise FileNotFoundError(f"{data_dir} holds neither {FOLDER}/ nor {ARCHIVE}: download {URL} "
                            f"into {data_dir} (extracted or not)")
