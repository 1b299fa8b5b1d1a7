"""The benchmark's tables: each set split once per seed, and the full-run table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import toydata
from cnflow.experiments.tabular.config import FULL_RUN_ROWS
from cnflow.runs import write_text

# Real tables that ship with scikit-learn: the set's name -> its loader in sklearn.datasets.
SKLEARN_LOADERS = {"wine": "load_wine", "breast_cancer": "load_breast_cancer",
                   "digits": "load_digits"}
# Rows drawn for each part of a generated (known-density) set.
GENERATED_ROWS = {"train": 10000, "val": 1000, "test": 5000}
# Training and validation shares of a real table's split; the rest is the test part.
SPLIT_FRACTIONS = (0.8, 0.1)
PCA_COMPONENTS = 16
# Seeds the full-run table (fixed: every full run fits the same rows).
FULL_RUN_TABLE_SEED = 7


def split(n: int, seed: int, fractions: tuple[float, float] = SPLIT_FRACTIONS
          ) -> tuple[np.ndarray, ...]:
    """Row indices of the training, validation and test parts of ``n`` rows."""
    order = np.random.default_rng([seed, 991]).permutation(n)
    a, b = round(fractions[0] * n), round((fractions[0] + fractions[1]) * n)
    return order[:a], order[a:b], order[b:]


def mnist_images() -> np.ndarray:
    """The packaged MNIST test images, one flattened image per row (float64)."""
    from cnflow.data.mnist import OFFLINE_DIR, find_mnist_files, load_idx_pair

    x, _ = load_idx_pair(*find_mnist_files(OFFLINE_DIR, "t10k"))
    return x.reshape(len(x), -1).numpy().astype(np.float64)


def benchmark_split(name: str, seed: int) -> tuple[dict[str, np.ndarray], float | None]:
    """Training, validation and test rows of one set for one seed, and its entropy floor.

    Real tables are split 80/10/10; constant columns (digits' border pixels) are dropped,
    judged on the training rows. ``mnist_pca16`` projects the packaged MNIST test images on
    the 16 leading principal components of its training rows. The mixed-block sets draw
    10,000 / 1,000 / 5,000 fresh rows.
    """
    if name in SKLEARN_LOADERS:
        import sklearn.datasets

        rows = getattr(sklearn.datasets, SKLEARN_LOADERS[name])().data.astype(np.float64)
    elif name == "mnist_pca16":
        rows = mnist_images()
    else:
        dataset = toydata.get(name)
        parts = {part: dataset.sample(n, seed=10**5 * (i + 1) + seed)
                 for i, (part, n) in enumerate(GENERATED_ROWS.items())}
        return parts, dataset.entropy()
    train, val, test = split(len(rows), seed)
    parts = {"train": rows[train], "val": rows[val], "test": rows[test]}
    if name == "mnist_pca16":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=PCA_COMPONENTS, random_state=seed).fit(parts["train"])
        parts = {k: pca.transform(v) for k, v in parts.items()}
    keep = np.flatnonzero(np.ptp(parts["train"], axis=0) > 0)
    return {k: v[:, keep] for k, v in parts.items()}, None


def mix6_table(path: Path, rows: int = FULL_RUN_ROWS) -> Path:
    """``rows`` rows of the known-density set ``mix6`` as a CSV at ``path``, written once
    (an existing file is kept)."""
    if not path.exists():
        values = toydata.get("mix6").sample(rows, seed=FULL_RUN_TABLE_SEED)
        header = ",".join(f"x{j}" for j in range(values.shape[1]))
        write_text(header + "\n" + "\n".join(",".join(f"{v:.8g}" for v in row)
                                              for row in values) + "\n", path)
    return path
