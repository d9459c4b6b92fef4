"""Tasks: a model (init, apply), its optimizer settings and its data. Built-ins and user plug-ins.

A user task is ``--task package.module:attribute`` where the attribute is a :class:`Task` or a
zero-argument callable returning one. Tasks are classification: ``apply(params, x)`` returns
logits and the loss is softmax cross-entropy with integer labels.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from fednode.node.trainer.data import load_digits_dataset, load_fashion_mnist
from fednode.security.arrays import Model


class TaskError(Exception):
    """Unknown task name or a plug-in that cannot be imported (one-line message)."""


@dataclass(frozen=True)
class Task:
    name: str
    init: Callable[[int], Model]
    """seed -> parameters as float32 numpy arrays (identical on every machine for one seed)."""
    apply: Callable[[dict, jnp.ndarray], jnp.ndarray]
    """(params as a dict of jax arrays, batch of inputs) -> logits."""
    load_data: Callable[[str | None], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    """data_dir -> (x_train, y_train, x_test, y_test)."""
    batch_size: int = 32
    learning_rate: float = 0.05
    momentum: float = 0.0


def mlp_init(sizes: tuple[int, ...]) -> Callable[[int], Model]:
    """He-uniform MLP initialisation from a seed, in numpy so that it is bit-identical everywhere."""
    def init(seed: int) -> Model:
        rng = np.random.default_rng([seed, 104729])
        params: Model = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            limit = math.sqrt(6.0 / fan_in)
            params[f"l{i}/w"] = rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)
            params[f"l{i}/b"] = np.zeros(fan_out, dtype=np.float32)
        return params
    return init


def mlp_apply(n_layers: int) -> Callable[[dict, jnp.ndarray], jnp.ndarray]:
    def apply(params: dict, x: jnp.ndarray) -> jnp.ndarray:
        h = x
        for i in range(n_layers):
            h = h @ params[f"l{i}/w"] + params[f"l{i}/b"]
            if i < n_layers - 1:
                h = jax.nn.relu(h)
        return h
    return apply


def _mlp_task(name: str, sizes: tuple[int, ...], loader, **kw) -> Task:
    return Task(name=name, init=mlp_init(sizes), apply=mlp_apply(len(sizes) - 1), load_data=loader, **kw)


BUILTIN_TASKS: dict[str, Callable[[], Task]] = {
    "digits": lambda: _mlp_task("digits", (64, 128, 128, 10), lambda d: load_digits_dataset(),
                                batch_size=32, learning_rate=0.05, momentum=0.9),
    "fashion-mnist": lambda: _mlp_task("fashion-mnist", (784, 200, 200, 10), load_fashion_mnist,
                                       batch_size=32, learning_rate=0.05, momentum=0.0),
}


def resolve_task(spec: str) -> Task:
    """A built-in task name, or ``package.module:attribute``."""
    if spec in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec]()
    if ":" not in spec:
        raise TaskError(f"unknown task {spec!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}; "
                        f"or give package.module:attribute")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskError(f"cannot import task module {module_name!r}: {exc}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise TaskError(f"module {module_name!r} has no attribute {attr!r}") from None
    if callable(obj) and not isinstance(obj, Task):
        obj = obj()
    if not isinstance(obj, Task):
        raise TaskError(f"{spec} is not a fednode Task (got {type(obj).__name__})")
    return obj
