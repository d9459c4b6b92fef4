"""Trainer and data: deterministic partitions, real learning, optimizer state, task resolution."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fednode.node.trainer import DataError, load_digits_dataset, load_fashion_mnist
from fednode.node.trainer.data import all_shards, shard_indices

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("split", ["iid", "dirichlet"])
@pytest.mark.parametrize("count,seed,alpha", [(1, 0, 0.5), (3, 1, 0.1), (8, 0, 0.5), (16, 7, 1.0)])
def test_shards_partition_the_training_set(split, count, seed, alpha):
    _, y, _, _ = load_digits_dataset()
    shards = all_shards(y, seed=seed, node_count=count, split=split, alpha=alpha)
    joined = np.concatenate(shards)
    assert len(joined) == len(y) and len(np.unique(joined)) == len(y)  # disjoint, union = all
    assert min(len(s) for s in shards) >= 10
    again = shard_indices(y, seed=seed, node_index=count - 1, node_count=count, split=split, alpha=alpha)
    assert np.array_equal(again, shards[-1])  # deterministic from (seed, index, count)


def test_dirichlet_split_is_label_skewed():
    _, y, _, _ = load_digits_dataset()
    shards = all_shards(y, seed=0, node_count=8, split="dirichlet", alpha=0.1)
    top_share = [np.bincount(y[s], minlength=10).max() / len(s) for s in shards]
    assert np.mean(top_share) > 0.4  # IID would give about 0.1


trainer_mod = pytest.importorskip("fednode.node.trainer.core")


def _trainer(**kw):
    from fednode.node.trainer import Trainer, resolve_task
    return Trainer(resolve_task(kw.pop("task", "digits")), seed=0, **kw)


def test_digits_learns_centrally_and_keeps_the_spec():
    t = _trainer(node_index=0, node_count=1)
    p0 = t.init_params()
    assert t.model_spec.matches(p0)
    p = p0
    for _ in range(10):
        p = t.local_step(p)
    assert t.model_spec.matches(p) and all(v.dtype == np.float32 for v in p.values())
    assert any(not np.array_equal(p[k], p0[k]) for k in p)
    acc, loss = t.evaluate(p)
    assert acc >= 0.93 and loss < 0.3


def test_init_is_identical_across_nodes_and_optimizer_state_round_trips():
    a, b = _trainer(node_index=0, node_count=4), _trainer(node_index=3, node_count=4)
    pa, pb = a.init_params(), b.init_params()
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    a.local_step(pa)
    state = a.optimizer_state()
    c = _trainer(node_index=0, node_count=4)
    c.load_optimizer_state(state)
    assert c.optimizer_state()["step_count"][0] == state["step_count"][0]
    x1, x2 = a.local_step(pa), c.local_step(pa)  # same data position and momentum: same result
    assert all(np.allclose(x1[k], x2[k], atol=1e-6) for k in x1)


def test_resolve_task_errors_and_plugins():
    from fednode.node.trainer import TaskError, resolve_task
    with pytest.raises(TaskError, match="built-in tasks: digits, fashion-mnist"):
        resolve_task("cifar")
    with pytest.raises(TaskError, match="cannot import"):
        resolve_task("no_such_module_xyz:task")
    with pytest.raises(TaskError, match="no attribute"):
        resolve_task("examples.custom_task:nope")
    task = resolve_task("examples.custom_task:task")
    t = _trainer(task="examples.custom_task:task", node_index=0, node_count=2)
    p = t.init_params()
    for _ in range(20):
        p = t.local_step(p)
    assert task.name == "wine-logreg" and t.evaluate(p)[0] >= 0.85


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_reads_the_real_files():
    x, y, xt, yt = load_fashion_mnist()
    assert x.shape == (60000, 784) and xt.shape == (10000, 784) and set(np.unique(y)) == set(range(10))
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_fashion_mnist_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_fashion_mnist(tmp_path / "nowhere")
    with pytest.raises(DataError, match="missing"):
        load_fashion_mnist(tmp_path)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as fh:
            fh.write(b"\x00\x00\x08\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="not a Fashion-MNIST IDX file"):
        load_fashion_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read"):
        load_fashion_mnist(tmp_path)
