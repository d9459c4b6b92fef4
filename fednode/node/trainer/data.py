"""Datasets and deterministic shards (numpy only; no JAX here).

Every node of a federation builds the same train/test split; its shard of the training set
is a deterministic function of (seed, node index, node count, split, alpha), and the shards
of all nodes partition the training set.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "x_train": ("train-images-idx3-ubyte.gz", 2051, 60000),
    "y_train": ("train-labels-idx1-ubyte.gz", 2049, 60000),
    "x_test": ("t10k-images-idx3-ubyte.gz", 2051, 10000),
    "y_test": ("t10k-labels-idx1-ubyte.gz", 2049, 10000),
}
MIN_SHARD = 10


class DataError(Exception):
    """A dataset is missing, unreadable or corrupt (one-line message)."""


def load_digits_dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (no download), scaled to [0, 1], fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    rng = np.random.default_rng(20240601)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.nonzero(y == c)[0]
        rng.shuffle(idx)
        test[idx[: int(round(0.2 * len(idx)))]] = True
    return x[~test], y[~test], x[test], y[test]


def _read_idx(path: Path, magic: int, count: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataError(f"missing {path} (install the Debian package dataset-fashion-mnist, "
                        f"or point --data-dir at the IDX .gz files)") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(raw) < 8:
        raise DataError(f"{path} is truncated")
    got_magic, n = struct.unpack(">II", raw[:8])
    if got_magic != magic or n != count:
        raise DataError(f"{path} is not a Fashion-MNIST IDX file (magic {got_magic}, {n} items)")
    if magic == 2051:
        rows, cols = struct.unpack(">II", raw[8:16])
        body = np.frombuffer(raw, dtype=np.uint8, offset=16)
        if body.size != n * rows * cols:
            raise DataError(f"{path} is truncated")
        return body.reshape(n, rows * cols)
    body = np.frombuffer(raw, dtype=np.uint8, offset=8)
    if body.size != n:
        raise DataError(f"{path} is truncated")
    return body


def load_fashion_mnist(data_dir: str | Path | None = None):
    """The four standard IDX .gz files; images as float32 in [0, 1], 784 features."""
    d = Path(data_dir) if data_dir else DEFAULT_FASHION_DIR
    if not d.is_dir():
        raise DataError(f"Fashion-MNIST directory {d} does not exist (apt-get install dataset-fashion-mnist, "
                        f"or --data-dir)")
    out = {k: _read_idx(d / f, m, c) for k, (f, m, c) in _FASHION_FILES.items()}
    return (out["x_train"].astype(np.float32) / 255.0, out["y_train"].astype(np.int32),
            out["x_test"].astype(np.float32) / 255.0, out["y_test"].astype(np.int32))


def shard_indices(labels: np.ndarray, *, seed: int, node_index: int, node_count: int, split: str = "iid",
                  alpha: float = 0.5) -> np.ndarray:
    """This node's training indices: IID, or Dirichlet(alpha) label skew; shards partition the set."""
    return all_shards(labels, seed=seed, node_count=node_count, split=split, alpha=alpha)[node_index]


def all_shards(labels: np.ndarray, *, seed: int, node_count: int, split: str = "iid",
               alpha: float = 0.5) -> list[np.ndarray]:
    if not 1 <= node_count <= len(labels) // MIN_SHARD:
        raise DataError(f"cannot split {len(labels)} examples into {node_count} shards of >= {MIN_SHARD}")
    rng = np.random.default_rng([seed, node_count, 7919])
    if split == "iid":
        perm = rng.permutation(len(labels))
        return [np.sort(p) for p in np.array_split(perm, node_count)]
    if split != "dirichlet":
        raise DataError(f"unknown split {split!r}")
    classes = np.unique(labels)
    for _attempt in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(node_count)]
        for c in classes:
            idx = np.nonzero(labels == c)[0]
            rng.shuffle(idx)
            props = rng.dirichlet(alpha * np.ones(node_count))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        shards = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(s) for s in shards) >= MIN_SHARD:
            return shards
    # deterministic top-up: move examples from the largest shard until every shard has MIN_SHARD
    while min(len(s) for s in shards) < MIN_SHARD:
        small = int(np.argmin([len(s) for s in shards]))
        big = int(np.argmax([len(s) for s in shards]))
        shards[small] = np.sort(np.append(shards[small], shards[big][-1]))
        shards[big] = shards[big][:-1]
    return shards
