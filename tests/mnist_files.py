"""IDX files and MNIST-style data folders, written by the tests of the IDX reader
(test_data_mnist.py) and of `cnflow classify` (test_cli_classify.py)."""

from __future__ import annotations

import gzip
import struct

import numpy as np


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes holding ``array`` (with its own magic number, or
    ``magic``)."""
    code = 0x08
    magic = (code << 8 | array.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(">u1").tobytes()


def write_mnist_dir(root, n_train=6, n_test=4, gz=True):
    """A folder of random MNIST-style train and t10k IDX files (gzipped or not)."""
    rng = np.random.RandomState(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (("images-idx3", rng.randint(0, 256, (n, 28, 28))),
                            ("labels-idx1", rng.randint(0, 10, n))):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte" + (".gz" if gz else "")
            (root / name).write_bytes(gzip.compress(data) if gz else data)
    return root
