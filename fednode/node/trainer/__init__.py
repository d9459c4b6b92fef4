"""The trainer: a task (JAX model, loss, optimizer) plus this node's local data.

The only part of fednode that imports JAX. ``configure_jax_for_multiprocess`` must run
before JAX is imported, so this package imports JAX lazily (module ``__getattr__``).
"""

from __future__ import annotations

import os

from fednode.node.trainer.data import DataError, load_digits_dataset, load_fashion_mnist, shard_indices

__all__ = ["DataError", "TaskError", "Task", "Trainer", "resolve_task", "BUILTIN_TASKS",
           "configure_jax_for_multiprocess", "load_digits_dataset", "load_fashion_mnist", "shard_indices"]


def configure_jax_for_multiprocess(cache_dir: str | None = None) -> None:
    """One XLA CPU thread per process (several nodes share 2 cores); call before JAX is imported."""
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"):
        if flag not in flags:
            flags = (flags + " " + flag).strip()
    os.environ["XLA_FLAGS"] = flags
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if cache_dir:
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache_dir)


def __getattr__(name: str):
    if name in ("Task", "TaskError", "resolve_task", "BUILTIN_TASKS"):
        from fednode.node.trainer import tasks
        return getattr(tasks, name)
    if name == "Trainer":
        from fednode.node.trainer.core import Trainer
        return Trainer
    raise AttributeError(name)
