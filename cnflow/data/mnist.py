"""MNIST from IDX files, the offline MNIST-t10k split, and sklearn's 8x8 digits.

Three sources, one container (:class:`ClassificationData`):

* :func:`load_mnist` reads the standard 60,000/10,000 MNIST split from a directory of IDX
  files (gzip-compressed or not).
* :func:`load_mnist_offline` splits the official 10,000-image MNIST *test* set that ships
  with cnflow (``cnflow/data/mnist/t10k-*.gz``) into 8,000 train / 2,000 test images,
  stratified by label, with a fixed seed. It is named ``"MNIST-t10k split 8000/2000"`` so
  that no number measured on it is mistaken for a full-MNIST result.
* :func:`load_digits` wraps sklearn's 1,797 8x8 digits, small enough for unit tests.
* :func:`load_named` loads any of them by the name the command line uses
  (:data:`DATA_NAMES`).

The IDX reader checks everything a truncated, corrupt or mislabelled file can get wrong
(magic number, element type, rank, size, image/label count) and raises
:class:`IDXFormatError`, a ``ValueError``, naming the file and what was wrong. It reads the
header before the data and then exactly the declared number of bytes, refusing a declared
size above :data:`MAX_IDX_BYTES`, so a small file that claims (or decompresses to)
gigabytes cannot exhaust memory.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnflow.validation import check_choice, check_float, check_int

__all__ = [
    "DATA_NAMES",
    "MAX_IDX_BYTES",
    "OFFLINE_DIR",
    "OFFLINE_SPLIT_SEED",
    "ClassificationData",
    "IDXFormatError",
    "check_data_name",
    "find_mnist_files",
    "load_digits",
    "load_idx_pair",
    "load_mnist",
    "load_mnist_offline",
    "load_named",
    "read_idx",
]

#: Folder of the packaged MNIST test set (10,000 images, official IDX files).
OFFLINE_DIR = Path(__file__).resolve().parent / "mnist"

#: Seed of the offline 8,000/2,000 split: the ``random_state`` of scikit-learn's
#: stratified ``train_test_split``, which draws from numpy's legacy ``RandomState`` (a
#: stream numpy keeps stable across versions).
OFFLINE_SPLIT_SEED = 0

#: The data sets by the names of ``cnflow classify --data``: the offline MNIST-t10k split,
#: sklearn's digits, and full MNIST from a folder of IDX files.
DATA_NAMES = ("offline", "digits", "idx")

# IDX element-type codes (third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Magic numbers of MNIST files: unsigned bytes, rank 3 for images and rank 1 for labels.
_IMAGES_MAGIC = 0x00000803  # 2051
_LABELS_MAGIC = 0x00000801  # 2049


class IDXFormatError(ValueError):
    """An IDX file is truncated, corrupt, or not the kind of file it was expected to be."""


@dataclass(frozen=True)
class ClassificationData:
    """An image-classification data set, already split, as in-memory tensors.

    Attributes:
        name: What the data set is, as it must appear in every report.
        x_train: Training images, float32, shape ``(N, C, H, W)``, values in ``[0, 1]``.
        y_train: Training labels, int64, shape ``(N,)``.
        x_test: Test images, same layout as ``x_train``.
        y_test: Test labels.
        num_classes: Number of classes.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int = 10

    @property
    def in_channels(self) -> int:
        """Number of image channels."""
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        """Side length of the (square) images in pixels."""
        return int(self.x_train.shape[-1])

    def describe(self) -> str:
        """One line naming the data set and its split sizes."""
        return (f"{self.name} ({len(self.y_train)} train / {len(self.y_test)} test, "
                f"{self.in_channels}x{self.image_size}x{self.image_size})")


def _is_gzip(path: Path) -> bool:
    # Decide by content, not by name: a renamed .gz (or a plain file named .gz) still reads.
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _gzip_error(path: Path, exc: Exception) -> IDXFormatError:
    return IDXFormatError(f"{path}: corrupt or truncated gzip data ({exc})")


#: The largest payload :func:`read_idx` reads unless told otherwise: over five times full
#: MNIST's largest file (60,000 28x28 images, 47,040,000 bytes). A header is checked against it
#: before any data are decompressed, so a small file declaring gigabytes fails at once.
MAX_IDX_BYTES = 256 * 2**20


def read_idx(path: str | os.PathLike, *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array.

    The header is read first; only the number of bytes it declares is then read (and
    decompressed), so memory is bounded by ``max_bytes`` whatever the file holds.

    Args:
        path: The file.
        max_bytes: The largest payload accepted, in bytes.

    Returns:
        The array, with the shape and element type that the file's header declares
        (converted to native byte order).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IDXFormatError: The header is malformed or declares more than ``max_bytes``, or the
            data are shorter or longer than the header says.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist")
    compressed = _is_gzip(path)
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as handle:
            head = handle.read(4)
            if len(head) < 4:
                raise IDXFormatError(f"{path}: only {len(head)} bytes, too short for an IDX "
                                     "header")
            zero, type_code, ndim = struct.unpack(">HBB", head)
            if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
                raise IDXFormatError(f"{path}: bad magic number 0x{head.hex()} "
                                     "(not an IDX file)")
            header_len = 4 + 4 * ndim
            dims = handle.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise IDXFormatError(f"{path}: truncated header (rank {ndim} needs {header_len} "
                                     f"bytes, file has {4 + len(dims)})")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = _IDX_DTYPES[type_code]
            expected = math.prod(shape) * dtype.itemsize  # Python ints: cannot overflow
            if expected > max_bytes:
                raise IDXFormatError(f"{path}: header declares shape {tuple(shape)} ({expected} "
                                     f"data bytes), more than max_bytes={max_bytes}; a corrupt "
                                     "header, or pass a larger max_bytes to read it")
            data = handle.read(expected)
            # One byte past the declared end tells trailing data apart without reading it all.
            extra = handle.read(1)
    except (OSError, EOFError, zlib.error) as exc:
        if not compressed:
            raise
        raise _gzip_error(path, exc) from exc
    if len(data) != expected or extra:
        kind, holds = ("truncated", f"{len(data)}") if len(data) < expected else (
            "has trailing bytes", f"more than {expected}")
        raise IDXFormatError(f"{path}: {kind}: header declares shape {tuple(shape)} "
                             f"({expected} data bytes), file holds {holds}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _magic(path: Path) -> int:
    """The first four bytes of an (optionally gzipped) file as a big-endian integer."""
    compressed = _is_gzip(path)
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as handle:
            first = handle.read(4)
    except (OSError, EOFError, zlib.error) as exc:
        if not compressed:
            raise
        raise _gzip_error(path, exc) from exc
    if len(first) < 4:
        raise IDXFormatError(f"{path}: only {len(first)} bytes, too short for an IDX header")
    return struct.unpack(">I", first)[0]


def load_idx_pair(images_path: str | os.PathLike,
                  labels_path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an MNIST-style images file and its labels file and check that they match.

    Args:
        images_path: IDX file of unsigned-byte images, rank 3 (magic number 2051).
        labels_path: IDX file of unsigned-byte labels, rank 1 (magic number 2049).

    Returns:
        ``(images, labels)``: float32 images of shape ``(N, 1, H, W)`` scaled to ``[0, 1]``,
        and int64 labels of shape ``(N,)``.

    Raises:
        FileNotFoundError: A file does not exist.
        IDXFormatError: A file is corrupt or truncated, is the wrong kind of IDX file (for
            example the labels file given as images), or the two counts differ.
    """
    images_path, labels_path = Path(images_path), Path(labels_path)
    for path, want, what in ((images_path, _IMAGES_MAGIC, "images (idx3-ubyte)"),
                             (labels_path, _LABELS_MAGIC, "labels (idx1-ubyte)")):
        if not path.is_file():
            raise FileNotFoundError(f"IDX file {str(path)!r} does not exist")
        got = _magic(path)
        if got != want:
            raise IDXFormatError(f"{path}: magic number {got} (0x{got:08x}), expected {want} "
                                 f"(0x{want:08x}) for MNIST {what}; is it the wrong file?")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise IDXFormatError(f"count mismatch: {images_path} holds {images.shape[0]} images but "
                             f"{labels_path} holds {labels.shape[0]} labels")
    if labels.size and int(labels.max()) > 9:
        raise IDXFormatError(f"{labels_path}: label {int(labels.max())} is outside 0..9")
    x = torch.from_numpy(images).to(torch.float32).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(labels).to(torch.int64)
    return x, y


def find_mnist_files(directory: str | os.PathLike, prefix: str) -> tuple[Path, Path]:
    """Locate ``{prefix}-images`` and ``{prefix}-labels`` IDX files in ``directory``.

    Accepts the usual spellings: ``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``,
    each with or without ``.gz``.

    Args:
        directory: Folder holding the files.
        prefix: ``"train"`` or ``"t10k"``.

    Returns:
        ``(images_path, labels_path)``.

    Raises:
        FileNotFoundError: ``directory`` is not a folder, or a file is missing.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"MNIST directory {str(directory)!r} does not exist "
                                "or is not a folder")
    found = []
    for kind, rank in (("images", 3), ("labels", 1)):
        names = [f"{prefix}-{kind}{sep}idx{rank}-ubyte{ext}"
                 for sep in ("-", ".") for ext in (".gz", "")]
        for name in names:
            if (directory / name).is_file():
                found.append(directory / name)
                break
        else:
            raise FileNotFoundError(f"no {prefix} {kind} file in {str(directory)!r}; "
                                    f"looked for {', '.join(names)}")
    return found[0], found[1]


def load_mnist(directory: str | os.PathLike) -> ClassificationData:
    """Full MNIST, standard 60,000 train / 10,000 test split, from a directory of IDX files.

    Args:
        directory: Folder with ``train-*`` and ``t10k-*`` image and label files.

    Returns:
        The data set, named ``"MNIST"``.

    Raises:
        FileNotFoundError: The folder or one of its four files is missing.
        IDXFormatError: A file is corrupt, truncated or mislabelled.
    """
    x_train, y_train = load_idx_pair(*find_mnist_files(directory, "train"))
    x_test, y_test = load_idx_pair(*find_mnist_files(directory, "t10k"))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise IDXFormatError(f"train images are {tuple(x_train.shape[2:])} but test images are "
                             f"{tuple(x_test.shape[2:])} in {str(directory)!r}")
    return ClassificationData("MNIST", x_train, y_train, x_test, y_test)


def _stratified_split(name: str, x: torch.Tensor, y: torch.Tensor, n_test: int,
                      seed: int) -> ClassificationData:
    """``n_test`` images held out for testing, every class in the same share in both parts
    (scikit-learn's ``train_test_split(..., stratify=y)``)."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(y)), test_size=n_test, stratify=y.numpy(),
                                   random_state=seed)
    train, test = torch.from_numpy(train), torch.from_numpy(test)
    return ClassificationData(name, x[train], y[train], x[test], y[test])


def load_mnist_offline(n_train: int = 8000, *, seed: int = OFFLINE_SPLIT_SEED,
                       directory: str | os.PathLike | None = None) -> ClassificationData:
    """The official 10,000-image MNIST test set, split into train and test with a fixed seed.

    This is *not* full MNIST: the 60,000 training images are not shipped. The split is
    stratified by label (every digit has the same share of the train and the test part),
    drawn with ``seed``.

    Args:
        n_train: Training images to take (the rest are the test set).
        seed: Seed of the split.
        directory: Folder with ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``;
            the copy packaged with cnflow when None.

    Returns:
        The data set, named ``"MNIST-t10k split {n_train}/{10000 - n_train}"``.

    Raises:
        ValueError: ``n_train`` leaves fewer than 10 training or test images (one per class).
        FileNotFoundError, IDXFormatError: As :func:`load_idx_pair`.
    """
    images_path, labels_path = find_mnist_files(OFFLINE_DIR if directory is None else directory,
                                                "t10k")
    x, y = load_idx_pair(images_path, labels_path)
    n = len(y)
    classes = len(torch.unique(y))
    check_int("n_train", n_train, minimum=classes, maximum=n - classes)
    name = f"MNIST-t10k split {n_train}/{n - n_train}"
    if seed != OFFLINE_SPLIT_SEED:
        name += f" (seed {seed})"
    return _stratified_split(name, x, y, n - n_train, seed)


def load_digits(test_fraction: float = 0.2, *, seed: int = 0) -> ClassificationData:
    """sklearn's 1,797 8x8 handwritten digits, split into train and test with a fixed seed.

    Args:
        test_fraction: Share of the images held out for testing, in ``(0, 1)``.
        seed: Seed of the split (stratified by label, like :func:`load_mnist_offline`'s).

    Returns:
        The data set, named ``"sklearn digits 8x8 split {n_train}/{n_test}"``; images are scaled
        from sklearn's 0..16 to ``[0, 1]``.

    Raises:
        ValueError: ``test_fraction`` is not strictly between 0 and 1.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    check_float("test_fraction", test_fraction, maximum=1, allow_maximum=False)
    bunch = sklearn_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    n = len(y)
    classes = len(torch.unique(y))
    # Stratifying needs at least one image of every class in each part.
    n_test = min(max(classes, round(test_fraction * n)), n - classes)
    return _stratified_split(f"sklearn digits 8x8 split {n - n_test}/{n_test}", x, y, n_test,
                             seed)


def check_data_name(name: str, directory: str | os.PathLike | None = None) -> None:
    """Refuse a name not in :data:`DATA_NAMES`, an ``"idx"`` without its folder and a folder
    for any other data set, naming the setting (``data``, ``data_dir``) and its value."""
    check_choice("data", name, DATA_NAMES)
    if (name == "idx") != (directory is not None):
        raise ValueError(f"data_dir={None if directory is None else str(directory)!r} with "
                         f"data={name!r}: a folder of MNIST IDX files is given with data='idx' "
                         "and only then")


def load_named(name: str, directory: str | os.PathLike | None = None) -> ClassificationData:
    """The data set called ``name`` in :data:`DATA_NAMES`, with its default split.

    Args:
        name: ``"offline"`` (:func:`load_mnist_offline`), ``"digits"`` (:func:`load_digits`)
            or ``"idx"`` (:func:`load_mnist` from ``directory``).
        directory: The IDX folder; required for ``"idx"`` and refused for the others.

    Raises:
        ValueError: ``name`` is unknown, or ``directory`` is missing or superfluous.
        FileNotFoundError, IDXFormatError: As the loaders.
    """
    check_data_name(name, directory)
    if name == "idx":
        return load_mnist(directory)
    return load_digits() if name == "digits" else load_mnist_offline()
