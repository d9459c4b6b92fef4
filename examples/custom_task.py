"""A user task: plug it in with `fednode start --task examples.custom_task:task` (run from the repository root,
or put this module anywhere on PYTHONPATH).

A task is a model (``init`` from a seed, ``apply`` in JAX returning logits), optimizer settings and a data
loader returning (x_train, y_train, x_test, y_test) as numpy arrays with integer labels. This one is a
logistic-regression model on scikit-learn's bundled wine dataset (no download).
"""

from __future__ import annotations

import numpy as np

from fednode.node.trainer import Task


def load_wine_data(data_dir: str | None):
    from sklearn.datasets import load_wine
    d = load_wine()
    x = d.data.astype(np.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = d.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    cut = int(0.75 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def init(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": (0.01 * rng.normal(size=(13, 3))).astype(np.float32), "b": np.zeros(3, dtype=np.float32)}


def apply(params, x):
    return x @ params["w"] + params["b"]


task = Task(name="wine-logreg", init=init, apply=apply, load_data=load_wine_data, batch_size=8,
            learning_rate=0.1)
