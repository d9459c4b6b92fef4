"""Cheap numpy learning problems with a known optimum, for the simulator and convergence tests.

Node i holds f_i(x) = ||A_i x - b_i||^2 / (2 m_i); the federation minimises
F(x) = (1/n) sum_i f_i(x), whose optimum x* solves (sum_i A_i^T A_i / m_i) x = sum_i A_i^T b_i / m_i.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fednode.security.arrays import Model, ModelSpec


@dataclass
class LeastSquares:
    """A least-squares problem split across ``n`` nodes (IID or skewed)."""

    A: list[np.ndarray]
    b: list[np.ndarray]
    step_size: float
    local_steps: int = 1

    @classmethod
    def generate(cls, n: int, dim: int, *, rows_per_node: int = 20, skew: float = 0.0, noise: float = 0.1,
                 seed: int = 0, step_size: float | None = None, local_steps: int = 1) -> "LeastSquares":
        """Random problem. ``skew`` > 0 gives every node its own shifted data (non-IID optimum per node)."""
        rng = np.random.default_rng(seed)
        x_true = rng.normal(size=dim)
        A, b = [], []
        for _ in range(n):
            a = rng.normal(size=(rows_per_node, dim))
            if skew:
                a = a * (1.0 + skew * rng.uniform(0, 2, size=dim)) + skew * rng.normal(size=dim)
            shift = skew * rng.normal(size=dim)
            b.append(a @ (x_true + shift) + noise * rng.normal(size=rows_per_node))
            A.append(a)
        problem = cls(A, b, step_size=0.0, local_steps=local_steps)
        problem.step_size = step_size if step_size is not None else 0.5 / problem.smoothness()
        return problem

    @property
    def n(self) -> int:
        return len(self.A)

    @property
    def dim(self) -> int:
        return self.A[0].shape[1]

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec((("w", "<f8", (self.dim,)),))

    def smoothness(self) -> float:
        """L = max_i lambda_max(A_i^T A_i / m_i): step sizes below 1/L are stable for every node."""
        return max(float(np.linalg.eigvalsh(a.T @ a / a.shape[0])[-1]) for a in self.A)

    def optimum(self) -> np.ndarray:
        H = sum(a.T @ a / a.shape[0] for a in self.A)
        g = sum(a.T @ bb / a.shape[0] for a, bb in zip(self.A, self.b))
        return np.linalg.solve(H, g)

    def gradient(self, i: int, x: np.ndarray) -> np.ndarray:
        a, bb = self.A[i], self.b[i]
        return a.T @ (a @ x - bb) / a.shape[0]

    def local_step(self, i: int, model: Model) -> Model:
        x = np.array(model["w"], dtype=np.float64)
        for _ in range(self.local_steps):
            x = x - self.step_size * self.gradient(i, x)
        return {"w": x}

    def loss(self, x: np.ndarray) -> float:
        return float(np.mean([np.mean((a @ x - bb) ** 2) / 2 for a, bb in zip(self.A, self.b)]))
