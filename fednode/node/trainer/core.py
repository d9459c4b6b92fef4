"""Trainer: local SGD (with optional momentum) on this node's shard, evaluation on the common test set.

Everything crossing this boundary is numpy; JAX stays inside. Training and evaluation are jitted
once per Trainer with fixed batch shapes (the last partial training batch is dropped, the test
set is padded), so no round recompiles.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fednode.node.trainer.data import shard_indices
from fednode.node.trainer.tasks import Task
from fednode.security.arrays import Model, ModelSpec

_EVAL_BATCH = 1024


class Trainer:
    def __init__(self, task: Task, *, seed: int, node_index: int, node_count: int, split: str = "iid",
                 alpha: float = 0.5, data_dir=None, local_epochs: float = 1.0, batch_size: int | None = None,
                 learning_rate: float | None = None, dp_sgd: tuple[float, float] | None = None) -> None:
        """``dp_sgd = (noise multiplier z, per-example clip C)`` turns on example-level DP-SGD: Poisson
        sampling at rate q = batch / shard, per-example clipping to C, N(0, z^2 C^2) on each summed step."""
        self.task = task
        self.seed = seed
        self.node_index = node_index
        x_train, y_train, x_test, y_test = task.load_data(str(data_dir) if data_dir else None)
        idx = shard_indices(y_train, seed=seed, node_index=node_index, node_count=node_count, split=split,
                            alpha=alpha)
        self.x, self.y = np.asarray(x_train[idx]), np.asarray(y_train[idx])
        self.x_test, self.y_test = np.asarray(x_test), np.asarray(y_test)
        self.batch_size = min(batch_size or task.batch_size, len(self.y))
        self.learning_rate = learning_rate or task.learning_rate
        self.steps_per_round = max(1, math.ceil(local_epochs * len(self.y) / self.batch_size))
        self.model_spec = ModelSpec.of(task.init(seed))
        self._step_count = 0
        self._velocity: Model | None = None
        apply, lr, mom = task.apply, self.learning_rate, task.momentum

        def loss_fn(params, xb, yb):
            logits = apply(params, xb)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1))

        grad_fn = jax.value_and_grad(loss_fn)

        def run_steps(params, velocity, xs, ys):
            def body(carry, batch):
                p, v = carry
                loss, g = grad_fn(p, batch[0], batch[1])
                v = jax.tree_util.tree_map(lambda vi, gi: mom * vi + gi, v, g)
                p = jax.tree_util.tree_map(lambda pi, vi: pi - lr * vi, p, v)
                return (p, v), loss
            (params, velocity), losses = jax.lax.scan(body, (params, velocity), (xs, ys))
            return params, velocity, losses.mean()

        def eval_batch(params, xb, yb, mask):
            logits = apply(params, xb)
            logp = jax.nn.log_softmax(logits)
            nll = -jnp.take_along_axis(logp, yb[:, None], axis=1)[:, 0]
            correct = (jnp.argmax(logits, axis=1) == yb)
            return jnp.sum(correct * mask), jnp.sum(nll * mask)

        self._run_steps = jax.jit(run_steps)
        self._eval_batch = jax.jit(eval_batch)
        self._loss_fn = loss_fn
        self.dp_sgd: tuple[float, float] | None = None
        if dp_sgd is not None:
            self.enable_dp_sgd(*dp_sgd)

    # ------------------------------------------------------------------ DP-SGD (example-level DP)

    @property
    def sampling_rate(self) -> float:
        """q = expected batch / shard size: each example joins each step independently with probability q."""
        return min(1.0, self.batch_size / max(1, len(self.y)))

    def enable_dp_sgd(self, noise_multiplier: float, clip: float) -> None:
        """Switch local training to DP-SGD (z, C); call before warmup (it compiles another step)."""
        if not (noise_multiplier > 0 and clip > 0):
            raise ValueError("DP-SGD needs a noise multiplier > 0 and a clip > 0")
        self.dp_sgd = (float(noise_multiplier), float(clip))
        loss_fn = self._loss_fn
        b = self.batch_size
        self._dp_pad = int(b + 6 * math.sqrt(b) + 8)  # a Poisson batch exceeds this with probability < 1e-9
        lr, mom, expected = self.learning_rate, self.task.momentum, float(b)
        z, c = float(noise_multiplier), float(clip)

        def example_loss(params, x, y):
            return loss_fn(params, x[None], y[None])

        per_example = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))

        def private_grad(params, xb, yb, mask, key):
            grads = per_example(params, xb, yb)
            leaves = jax.tree_util.tree_leaves(grads)
            norms = jnp.sqrt(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in leaves))
            scale = mask * jnp.minimum(1.0, c / jnp.maximum(norms, 1e-12))
            summed = jax.tree_util.tree_map(lambda g: jnp.tensordot(scale, g, axes=1), grads)
            names = sorted(summed)
            keys = jax.random.split(key, len(names))
            noised = {n: summed[n] + z * c * jax.random.normal(k, summed[n].shape, summed[n].dtype)
                      for n, k in zip(names, keys)}
            return {n: g / expected for n, g in noised.items()}

        def run_dp_steps(params, velocity, xs, ys, masks, key):
            def body(carry, batch):
                p, v, k = carry
                k, sub = jax.random.split(k)
                g = private_grad(p, batch[0], batch[1], batch[2], sub)
                v = jax.tree_util.tree_map(lambda vi, gi: mom * vi + gi, v, g)
                p = jax.tree_util.tree_map(lambda pi, vi: pi - lr * vi, p, v)
                return (p, v, k), None
            (params, velocity, _), _ = jax.lax.scan(body, (params, velocity, key), (xs, ys, masks))
            return params, velocity

        self._run_dp_steps = jax.jit(run_dp_steps)

    def _poisson_batches(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """steps_per_round Poisson samples of the shard, padded to a fixed size with a validity mask.

        The sampling must stay secret for the subsampling amplification to hold, so it comes from an
        OS-seeded generator, never from the federation seed. A sample larger than the pad (probability
        < 1e-9 per step) grows the pad for this round (one recompile) instead of truncating it.
        """
        n, q = len(self.y), self.sampling_rate
        picks = [np.flatnonzero(rng.random(n) < q) for _ in range(self.steps_per_round)]
        pad = max(self._dp_pad, max(len(p) for p in picks))
        xs = np.zeros((len(picks), pad, *self.x.shape[1:]), dtype=self.x.dtype)
        ys = np.zeros((len(picks), pad), dtype=self.y.dtype)
        masks = np.zeros((len(picks), pad), dtype=np.float32)
        for i, sel in enumerate(picks):
            xs[i, :len(sel)] = self.x[sel]
            ys[i, :len(sel)] = self.y[sel]
            masks[i, :len(sel)] = 1.0
        return xs, ys, masks

    @property
    def shard_size(self) -> int:
        return int(len(self.y))

    def init_params(self) -> Model:
        return self.task.init(self.seed)

    def _batches(self) -> tuple[np.ndarray, np.ndarray]:
        """The next ``steps_per_round`` batches: epoch-wise permutations from (seed, node, epoch)."""
        n, b = len(self.y), self.batch_size
        per_epoch = max(1, n // b)
        xs, ys = [], []
        for k in range(self._step_count, self._step_count + self.steps_per_round):
            epoch, pos = divmod(k, per_epoch)
            perm = np.random.default_rng([self.seed, self.node_index, epoch, 31337]).permutation(n)
            sel = perm[pos * b:(pos + 1) * b]
            xs.append(self.x[sel])
            ys.append(self.y[sel])
        self._step_count += self.steps_per_round
        return np.stack(xs), np.stack(ys)

    def local_step(self, params: Model) -> Model:
        p = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in params.items()}
        if self._velocity is None:
            self._velocity = {k: np.zeros_like(v, dtype=np.float32) for k, v in params.items()}
        v = {k: jnp.asarray(val) for k, val in self._velocity.items()}
        if self.dp_sgd is not None:
            from fednode.security.noise import jax_seed, make_rng
            xs, ys, masks = self._poisson_batches(make_rng())
            p, v = self._run_dp_steps(p, v, jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(masks),
                                      jax.random.PRNGKey(jax_seed()))
            self._step_count += self.steps_per_round
            self._velocity = {k: np.asarray(val) for k, val in v.items()}
            return {k: np.asarray(val, dtype=np.float32) for k, val in p.items()}
        xs, ys = self._batches()
        p, v, _loss = self._run_steps(p, v, jnp.asarray(xs), jnp.asarray(ys))
        self._velocity = {k: np.asarray(val) for k, val in v.items()}
        return {k: np.asarray(val, dtype=np.float32) for k, val in p.items()}

    def evaluate(self, params: Model) -> tuple[float, float]:
        p = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in params.items()}
        n = len(self.y_test)
        correct = total_nll = 0.0
        for start in range(0, n, _EVAL_BATCH):
            xb = self.x_test[start:start + _EVAL_BATCH]
            yb = self.y_test[start:start + _EVAL_BATCH]
            m = len(yb)
            if m < _EVAL_BATCH:  # pad to the fixed shape: one compilation
                xb = np.concatenate([xb, np.zeros((_EVAL_BATCH - m, *xb.shape[1:]), dtype=xb.dtype)])
                yb = np.concatenate([yb, np.zeros(_EVAL_BATCH - m, dtype=yb.dtype)])
            mask = (np.arange(_EVAL_BATCH) < m).astype(np.float32)
            c, l = self._eval_batch(p, jnp.asarray(xb), jnp.asarray(yb), jnp.asarray(mask))
            correct += float(c)
            total_nll += float(l)
        return correct / n, total_nll / n

    def warmup(self, params: Model) -> None:
        """Compile the training and evaluation functions now, without touching any state."""
        p = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in params.items()}
        v = {k: jnp.zeros_like(val) for k, val in p.items()}
        xs = np.zeros((self.steps_per_round, self.batch_size, *self.x.shape[1:]), dtype=self.x.dtype)
        ys = np.zeros((self.steps_per_round, self.batch_size), dtype=self.y.dtype)
        jax.block_until_ready(self._run_steps(p, v, jnp.asarray(xs), jnp.asarray(ys)))
        if self.dp_sgd is not None:
            shape = (self.steps_per_round, self._dp_pad)
            jax.block_until_ready(self._run_dp_steps(
                p, v, jnp.zeros((*shape, *self.x.shape[1:]), dtype=self.x.dtype), jnp.zeros(shape, self.y.dtype),
                jnp.zeros(shape, jnp.float32), jax.random.PRNGKey(0)))
        xb = np.zeros((_EVAL_BATCH, *self.x_test.shape[1:]), dtype=self.x_test.dtype)
        yb = np.zeros(_EVAL_BATCH, dtype=self.y_test.dtype)
        jax.block_until_ready(self._eval_batch(p, jnp.asarray(xb), jnp.asarray(yb), jnp.zeros(_EVAL_BATCH)))

    def optimizer_state(self) -> Model:
        state = {f"velocity/{k}": v for k, v in (self._velocity or {}).items()}
        state["step_count"] = np.array([self._step_count], dtype=np.int64)
        return state

    def load_optimizer_state(self, state: Model) -> None:
        if "step_count" in state:
            self._step_count = int(np.asarray(state["step_count"]).reshape(-1)[0])
        vel = {k[len("velocity/"):]: np.asarray(v, dtype=np.float32) for k, v in state.items()
               if k.startswith("velocity/")}
        if vel:
            if set(vel) != set(self.model_spec.names):
                raise ValueError("optimizer state does not match the model")
            self._velocity = vel

    def reset_optimizer_state(self) -> None:
        self._velocity = None
