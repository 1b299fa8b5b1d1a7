"""The MNIST IDX reader and the classification data sets (cnflow.data.mnist)."""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc

import numpy as np
import pytest
import torch
from mnist_files import idx_bytes, write_mnist_dir

from cnflow.data.mnist import (
    IDXFormatError,
    check_data_name,
    load_digits,
    load_idx_pair,
    load_mnist,
    load_mnist_offline,
    load_named,
    read_idx,
)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(array)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    np.testing.assert_array_equal(read_idx(path), array)


def test_load_mnist_dir(tmp_path):
    data = load_mnist(write_mnist_dir(tmp_path))
    assert data.name == "MNIST"
    assert data.x_train.shape == (6, 1, 28, 28) and data.x_test.shape == (4, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and 0 <= data.x_train.min() <= 1
    assert data.y_train.dtype == torch.int64
    assert load_mnist(write_mnist_dir(tmp_path / "..", gz=False)).x_train.shape[0] == 6


def test_idx_reader_rejects_truncated_file(tmp_path):
    data = idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))
    path = tmp_path / "images"
    path.write_bytes(data[:-100])
    with pytest.raises(IDXFormatError, match="truncated"):
        read_idx(path)
    path.write_bytes(data[:10])
    with pytest.raises(IDXFormatError, match="truncated header"):
        read_idx(path)
    gz = tmp_path / "images.gz"
    gz.write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(IDXFormatError, match="gzip"):
        read_idx(gz)


def test_idx_reader_rejects_bad_magic_and_swapped_files(tmp_path):
    images = tmp_path / "images"
    labels = tmp_path / "labels"
    images.write_bytes(idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8)))
    labels.write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)))
    junk = tmp_path / "junk"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(IDXFormatError, match="bad magic number"):
        read_idx(junk)
    with pytest.raises(IDXFormatError, match="magic number 2049.*expected 2051"):
        load_idx_pair(labels, images)
    with pytest.raises(IDXFormatError, match="magic number"):
        load_idx_pair(junk, labels)


def test_idx_reader_rejects_count_mismatch_and_bad_labels(tmp_path):
    images = tmp_path / "images"
    labels = tmp_path / "labels"
    images.write_bytes(idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8)))
    labels.write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(IDXFormatError, match="count mismatch.*3 images.*4 labels"):
        load_idx_pair(images, labels)
    labels.write_bytes(idx_bytes(np.array([1, 2, 12], dtype=np.uint8)))
    with pytest.raises(IDXFormatError, match="label 12"):
        load_idx_pair(images, labels)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train images"):
        load_mnist(tmp_path)


def test_offline_split_is_fixed_stratified_and_named():
    data = load_mnist_offline()
    assert data.name == "MNIST-t10k split 8000/2000"
    assert data.x_train.shape == (8000, 1, 28, 28) and data.x_test.shape == (2000, 1, 28, 28)
    again = load_mnist_offline()
    assert torch.equal(data.y_test, again.y_test) and torch.equal(data.x_test, again.x_test)
    # Together the parts hold the whole test set, every class in both in the same share.
    train = torch.bincount(data.y_train, minlength=10)
    test = torch.bincount(data.y_test, minlength=10)
    assert (train + test).sum() == 10000 and (train + test).min() > 800
    assert ((test - 0.2 * (train + test)).abs() <= 1).all()
    assert load_mnist_offline(seed=1).name == "MNIST-t10k split 8000/2000 (seed 1)"
    with pytest.raises(ValueError, match=r"n_train must be an integer in \[10, 9990\], got 10000"):
        load_mnist_offline(10000)


def test_digits_loader():
    data = load_digits()
    assert data.x_train.shape[1:] == (1, 8, 8)
    assert len(data.y_train) + len(data.y_test) == 1797
    assert data.name.startswith("sklearn digits 8x8 split")
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
    counts = torch.bincount(data.y_test, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified: about 20 % of each class
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(1.5)


def test_load_named_checks_the_name_and_the_folder(tmp_path):
    assert load_named("digits").name.startswith("sklearn digits")
    assert load_named("idx", write_mnist_dir(tmp_path)).name == "MNIST"
    with pytest.raises(ValueError, match="data='mnist' is not one of"):
        load_named("mnist")
    with pytest.raises(ValueError, match="data_dir=None with data='idx'"):
        load_named("idx")
    with pytest.raises(ValueError, match="data_dir='.' with data='digits'"):
        check_data_name("digits", ".")


# --- IDX reader: sizes are checked before anything is decompressed ----------------------------

def _idx_header(shape, code=0x08) -> bytes:
    return struct.pack(">HBB", 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_idx_header_declaring_gigabytes_fails_without_reading(tmp_path):
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    # 4 GiB of float64 declared, a few bytes present.
    path.write_bytes(gzip.compress(_idx_header((2**16, 2**8, 2**5), code=0x0E) + bytes(64)))

    def read():
        with pytest.raises(IDXFormatError, match=rf"{path.name}: header declares shape "
                                                 r"\(65536, 256, 32\) \(4294967296 data bytes\),"
                                                 r" more than max_bytes="):
            read_idx(path)

    start = time.perf_counter()
    assert _peak_bytes(read) < 1 << 20
    assert time.perf_counter() - start < 1.0


def test_idx_reads_exactly_the_declared_bytes(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "a.gz"
    # Declares 24 bytes, decompresses to 16 MiB: only 25 bytes are ever decompressed.
    path.write_bytes(gzip.compress(_idx_header(array.shape) + array.tobytes() + bytes(2**24)))

    def read():
        with pytest.raises(IDXFormatError, match=r"has trailing bytes: .* \(24 data bytes\), "
                                                 "file holds more than 24"):
            read_idx(path)

    assert _peak_bytes(read) < 1 << 20
    path.write_bytes(gzip.compress(_idx_header(array.shape) + array.tobytes()[:-5]))
    with pytest.raises(IDXFormatError, match=r"truncated: .* \(24 data bytes\), file holds 19"):
        read_idx(path)
    path.write_bytes(gzip.compress(_idx_header(array.shape) + array.tobytes()))
    np.testing.assert_array_equal(read_idx(path), array)
    with pytest.raises(IDXFormatError, match="more than max_bytes=23"):
        read_idx(path, max_bytes=23)
    plain = tmp_path / "a.idx"
    plain.write_bytes(_idx_header((10**5, 10**5)) + bytes(10))
    with pytest.raises(IDXFormatError, match=r"\(10000000000 data bytes\), more than"):
        read_idx(plain)
